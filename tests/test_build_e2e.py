"""End to end on real (mini) Fashion-MNIST: train -> build on OpenVINO; every stage real."""
from __future__ import annotations

import json

import pytest

from edgeprune.cli import main
from tests.conftest import MINI_FMNIST

# The knapsack search end to end, at its smallest: one step, no random candidates, 100 held-out images
# (its parts are tested on their own in test_search_knapsack.py).
CHEAP_SEARCH = ("--search-steps", "1", "--search-step-batches", "0", "--search-candidates", "0",
                "--search-holdout", "100", "--search-refits", "1", "--search-finalists", "2",
                "--search-finalist-batches", "4", "--search-calibration", "2", "--search-progressive-steps", "2")
DATA = f"fashion-mnist:{MINI_FMNIST}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "base"
    assert main(["train", "--model", "resnet20", "--data", DATA, "--epochs", "2", "--lr", "0.05",
                 "--out", str(out), "--no-progress"]) == 0
    return out


def test_train_writes_checkpoint_and_accuracy(trained):
    result = json.loads((trained / "train.json").read_text())
    assert (trained / "model.pt").is_file()
    assert result["accuracy"] > 0.3  # 10 classes: chance is 0.1


def test_build_prunes_compiles_measures_and_reports(trained, tmp_path, capsys):
    out = tmp_path / "build"
    code = main(["build", "--target", "x86", "--model", "resnet20", "--weights", str(trained / "model.pt"),
                 "--data", DATA, "--method", "l1", "--ratio", "0.5", "--finetune-epochs", "0.5",
                 "--threads", "1", "--rounds", "1", "--min-seconds", "0.2", "--out", str(out), "--no-progress"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    for name in ("baseline", "pruned"):
        entry = report[name]
        for key in ("accuracy", "flops", "params", "peak_rss_mb", "size_mb"):
            assert entry[key] is not None and entry[key] > 0, (name, key)
        assert set(entry["latency"]) >= {"p50_ms", "p90_ms", "p99_ms", "mean_ms"}
        assert entry["target"] == "x86" and entry["precision"] == "fp32"
        assert entry["parity"]["max_rel_diff"] < 1e-3
        assert (out / entry["artifact"] / "manifest.json").is_file()
    # pruning really removed channels: fewer MACs, params and bytes on disk
    assert report["pruned"]["flops"] < 0.6 * report["baseline"]["flops"]
    assert report["pruned"]["params"] < 0.6 * report["baseline"]["params"]
    assert report["pruned"]["size_mb"] < report["baseline"]["size_mb"]
    assert all(g["after"] % 8 == 0 for g in report["prune"]["groups"])
    assert (out / "report.md").read_text().count("| baseline") == 1
    assert (out / "latency.png").stat().st_size > 1000
    assert (out / "pruned.pt").is_file()
    stdout = capsys.readouterr().out
    assert "p50 ms" in stdout and "faster" in stdout or "SLOWER" in stdout
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".build")]


def test_pruned_checkpoint_reloads_without_pickle(trained, tmp_path):
    import torch

    from edgeprune.models.checkpoint import load_checkpoint

    out = tmp_path / "build"
    assert main(["build", "--target", "onnxruntime", "--weights", str(trained / "model.pt"), "--data", DATA,
                 "--ratio", "0.3", "--finetune-epochs", "0", "--threads", "1", "--rounds", "1",
                 "--min-seconds", "0.1", "--out", str(out), "--no-progress"]) == 0
    model, spec, _ = load_checkpoint(out / "pruned.pt")
    assert spec["name"] == "resnet20"
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


@pytest.fixture(scope="module")
def lut_cache(tmp_path_factory):
    """One latency-table cache for this module's budget builds: the first measures the table, later ones reuse it."""
    return tmp_path_factory.mktemp("cache")


def test_build_with_latency_budget(trained, tmp_path, monkeypatch, capsys, lut_cache):
    monkeypatch.setenv("EDGEPRUNE_CACHE", str(lut_cache))
    out = tmp_path / "budget"
    code = main(["build", "--target", "onnxruntime", "--weights", str(trained / "model.pt"), "--data", DATA,
                 "--budget", "0.7x", "--round-to", "16", "--finetune-epochs", "0", "--threads", "1", "--rounds", "1",
                 "--min-seconds", "0.3", "--max-rounds", "4", "--out", str(out), "--no-progress", *CHEAP_SEARCH])
    if not out.exists():
        # A load burst on this shared box made the search's own measurements disagree with its predictions
        # beyond what its retries absorb: that is a failed step (exit 1, the figures, nothing written),
        # never blamed on the input (exit 2).
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert code == 1 and ("the measurements disagreed with the predictions" in err or "not met after" in err), err
        return
    report = json.loads((out / "report.json").read_text())
    search, gate = report["search"], report["gates"]["latency_budget"]
    # the final interleaved measurement decides the exit code: 0 met, 1 missed, 3 undecided (within the noise)
    assert code == {"met": 0, "missed": 1, "undecided": 3}[gate["decision"]] and search["met"] == (code == 0)
    assert gate["rounds"] == report["measurement"]["rounds"] and len(gate["interval"]) == 2
    last = search["attempts"][search["chosen_attempt"] - 1]
    assert last["predicted_ms"] <= search["budget_ms"] and last["measured_ms"] <= search["budget_ms"]
    assert search["budget_ms"] == pytest.approx(0.7 * search["baseline_measured_ms"])
    assert all(g["kept"] % 16 == 0 and 0 < g["kept"] <= g["width"] for g in search["groups"])  # --round-to 16
    assert search["table"]["rows_measured"] + search["table"]["rows_from_cache"] > 0
    assert search["calibration"]["models"].keys() >= {"unpruned", "mixed-1"}  # --search-calibration 2
    # the calibration's check: the unpruned model measured again right after each pass, the least disturbed pass kept
    passes = search["calibration"]["passes"]
    assert passes and all(p["unpruned_ms"] > 0 and p["check_ms"] > 0 for p in passes)
    assert [p["kept"] for p in passes].count(True) == 1
    assert search["baseline_measured_ms"] == min(p["unpruned_ms"] for p in passes)
    # --search-progressive-steps 2 with no step batches: a 2-step schedule on the original weights (not listed when
    # it kept the same channels as another candidate: duplicates are dropped)
    assert report["config"]["search_progressive_steps"] == 2
    assert all(not c["trained"] for c in search["candidates"] if c["name"].startswith("progressive (2 steps)"))
    assert (out / "staircase.png").is_file() and "## Latency budget" in (out / "report.md").read_text()


def test_impossible_budget_fails_clearly(trained, tmp_path, monkeypatch, capsys, lut_cache):
    monkeypatch.setenv("EDGEPRUNE_CACHE", str(lut_cache))
    code = main(["build", "--target", "onnxruntime", "--weights", str(trained / "model.pt"), "--data", DATA,
                 "--budget-ms", "0.0001", "--finetune-epochs", "0", "--threads", "1", "--out", str(tmp_path / "o"),
                 "--round-to", "16", "--no-progress", "--search-calibration", "0"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "cannot be met" in err and err.startswith("edgeprune: error:")
    assert not (tmp_path / "o").exists()


def test_accuracy_bar_fails_the_build_with_figures(trained, tmp_path, capsys):
    """--max-accuracy-drop is a gate: a build over the bar exits 1, prints the figures, keeps the report."""
    out = tmp_path / "bar"
    code = main(["build", "--target", "onnxruntime", "--weights", str(trained / "model.pt"), "--data", DATA,
                 "--ratio", "0.9", "--min-width", "0", "--finetune-epochs", "0", "--threads", "1", "--rounds", "1",
                 "--min-seconds", "0.1", "--max-accuracy-drop", "0.5", "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    report = json.loads((out / "report.json").read_text())
    gate = report["gates"]["accuracy"]
    assert code == 1 and not gate["passed"] and gate["drop_points"] > 0.5
    err = captured.err.strip().splitlines()[-1]
    assert err.startswith("edgeprune: error: the pruned model's top-1 fell") and "--max-accuracy-drop" in err
    assert "p50 ms" in captured.out  # the figures are printed before the verdict
    code = main(["build", "--target", "onnxruntime", "--weights", str(trained / "model.pt"), "--data", DATA,
                 "--ratio", "0.9", "--min-width", "0", "--finetune-epochs", "0", "--threads", "1", "--rounds", "1",
                 "--min-seconds", "0.1", "--max-accuracy-drop", "100", "--out", str(tmp_path / "ok"), "--no-progress"])
    assert code == 0 and json.loads((tmp_path / "ok" / "report.json").read_text())["gates"]["accuracy"]["passed"]


def test_prune_by_ratio_needs_no_runtime(trained, tmp_path, capsys):
    """prune compiles nothing: a TensorRT target's channel multiple is usable where TensorRT is missing."""
    out = tmp_path / "p"
    assert main(["prune", "--target", "jetson", "--weights", str(trained / "model.pt"), "--data", DATA,
                 "--ratio", "0.5", "--finetune-epochs", "0", "--out", str(out), "--no-progress",
                 "--json", str(tmp_path / "p.json")]) == 0
    summary = json.loads((out / "prune.json").read_text())
    assert summary["target"] == "jetson-orin" and summary["channel_multiple"] == 8
    assert all(g["after"] % 8 == 0 for g in summary["prune"]["groups"])
    assert json.loads((tmp_path / "p.json").read_text())["prune"] == summary["prune"]
