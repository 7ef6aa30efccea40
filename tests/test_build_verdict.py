"""The build's latency verdict: met exits 0, missed 1, undecided 3 — with constructed measurements.

Everything but the search and the timing is real (data, model, pruning, export, ONNX Runtime compile,
parity, report): ``prune_to_budget`` is replaced by a ratio prune with a recorded search, and
``measure_paired_rounds`` by the real round loop (``protocol.run_rounds``) over constructed per-round
p50s, so the exit code depends on the figures given, never on this machine's noise.
"""
from __future__ import annotations

import json

import pytest

from edgeprune.cli import main
from edgeprune.measure.protocol import run_rounds
from edgeprune.measure.stats import summarize
from tests.conftest import MINI_FMNIST

DATA = f"fashion-mnist:{MINI_FMNIST}"
SLOW_WINDOWS = [1.0, 1.5, 1.1, 1.0, 1.3, 1.0, 1.5, 1.2, 1.0, 1.4, 1.0, 1.1, 1.0, 1.2, 1.0]
BASE_MS = 0.45


def _fake_search(budget_ms: float, arg: str) -> dict:
    return {"budget_ms": budget_ms, "budget_arg": arg, "baseline_measured_ms": BASE_MS,
            "attempts": [{"attempt": 1, "search_target_ms": budget_ms, "predicted_ms": 0.9 * budget_ms,
                          "measured_ms": 0.182, "counts": [], "retained_importance": 0.8}],
            "chosen_attempt": 1, "measured_ms": 0.182,
            "predictor": {"scale": 1.0, "offset_ms": 0.0, "samples": 2},
            "table": {"sampling": "test", "statistic": "test", "rows_measured": 0, "rows_from_cache": 3,
                      "cache_dir": "none"},
            "groups": [], "staircase": [{"layer": "conv", "channels": [8, 16], "ms": [0.01, 0.02]}]}


@pytest.fixture
def fake_budget_build(monkeypatch):
    """Install the fakes; returns a setter for the per-round pruned/baseline ratios."""
    import edgeprune.build as build
    from edgeprune.prune import prune_model

    state: dict = {}

    def prune_to_budget(model, example, profile, budget, method, pctx, threads, calib, attempts, progress,
                        search=None, state=None):
        value, relative = build.parse_budget(budget)
        result = prune_model(model, example, "l1", 0.5, pctx.round_to, progress=False)
        return result, _fake_search(value * BASE_MS if relative else value, budget)

    def measure_paired_rounds(artifacts, settings=None, rounds=3, *, reference, progress=True, seed=0,
                              question=None, max_rounds=None, confidence=None):
        assert reference == "baseline"
        state["question"], state["rounds"], state["max_rounds"] = question, rounds, max_rounds

        def one_round(rnd):
            w = SLOW_WINDOWS[rnd % len(SLOW_WINDOWS)]
            p50 = {"baseline": BASE_MS * w, "pruned": BASE_MS * w * state["ratios"][rnd % len(state["ratios"])]}
            return {name: {"latency": summarize([p50[name]]), "peak_rss_mb": 40.0, "artifact": str(path),
                           "environment": {"cpu_model": "test"}} for name, path in artifacts.items()}

        return run_rounds(list(artifacts), one_round, rounds=rounds, question=question, max_rounds=max_rounds,
                          confidence=confidence)

    monkeypatch.setattr(build, "prune_to_budget", prune_to_budget)
    monkeypatch.setattr(build, "measure_paired_rounds", measure_paired_rounds)

    def run(ratios, out, budget="0.6x", extra=()):
        state["ratios"] = ratios
        code = main(["build", "--target", "onnxruntime", "--model", "resnet20", "--data", DATA, "--budget", budget,
                     "--finetune-epochs", "0", "--threads", "1", "--holdout-images", "40", "--eval-limit", "40",
                     "--max-rounds", "10", "--out", str(out), "--no-progress", *extra])
        return code, json.loads((out / "report.json").read_text()), state

    return run


def test_budget_met_exits_0(fake_budget_build, tmp_path, capsys):
    code, report, state = fake_budget_build([0.50, 0.52, 0.49], tmp_path / "met")
    gate = report["gates"]["latency_budget"]
    assert code == 0 and gate["decision"] == "met" and gate["passed"] and report["search"]["met"]
    assert state["question"].kind == "within_share" and state["question"].threshold == 0.6
    assert gate["rounds"] < 10 and gate["interval"][1] < 0.6 and gate["confidence"] == 0.95
    assert gate["spread"] >= 1.5  # the slow windows are reported even though the paired ratio decided
    assert report["measurement"]["rounds"] == gate["rounds"] and report["measurement"]["max_rounds"] == 10
    md = (tmp_path / "met" / "report.md").read_text()
    assert "Budget 0.6x: met" in md and "95% confidence" in md and "interval" in md
    out = capsys.readouterr().out
    assert "p50 95% interval" in out and "Budget 0.6x: met" in out


def test_budget_missed_exits_1_with_the_figures(fake_budget_build, tmp_path, capsys):
    code, report, _ = fake_budget_build([0.70, 0.72, 0.69], tmp_path / "missed")
    gate = report["gates"]["latency_budget"]
    assert code == 1 and gate["decision"] == "missed" and not gate["passed"] and gate["interval"][0] > 0.6
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("edgeprune: error: the final build measured") and "over the" in err
    assert "missed after" in err and "spread" in err and "the search's own check measured 0.182 ms" in err


def test_budget_within_the_noise_exits_3_and_says_what_to_do(fake_budget_build, tmp_path, capsys):
    code, report, state = fake_budget_build([0.55, 0.65], tmp_path / "undecided")
    gate = report["gates"]["latency_budget"]
    assert code == 3 and gate["decision"] == "undecided" and gate["rounds"] == 10 == state["max_rounds"]
    low, high = gate["interval"]
    assert low < 0.6 < high
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("edgeprune: error: the latency budget is undecided")
    assert "within this machine's noise" in err and "after 10 round(s)" in err and "spread" in err
    assert f"[{low:.3f}x, {high:.3f}x]" in err
    assert "--max-rounds" in err and "quieter machine" in err and "--threads" in err
    assert "UNDECIDED" in (tmp_path / "undecided" / "report.md").read_text()


def test_budget_in_ms_is_judged_on_the_pruned_p50(fake_budget_build, tmp_path):
    # pruned p50 = 0.45 ms x window x 0.5: 0.225-0.34 ms against 0.2 ms -> clearly missed
    code, report, state = fake_budget_build([0.5], tmp_path / "ms", budget="0.2ms")
    gate = report["gates"]["latency_budget"]
    assert state["question"].kind == "within_ms" and gate["unit"] == "ms"
    assert code == 1 and gate["decision"] == "missed" and gate["budget_ms"] == pytest.approx(0.2)


def test_bad_round_flags_are_refused_before_any_work(tmp_path, capsys):
    code = main(["build", "--target", "onnxruntime", "--model", "resnet20", "--data", DATA, "--rounds", "5",
                 "--max-rounds", "4", "--out", str(tmp_path / "o"), "--no-progress"])
    assert code == 2 and "--max-rounds (4) is below --rounds (5)" in capsys.readouterr().err
    code = main(["build", "--target", "onnxruntime", "--model", "resnet20", "--data", DATA, "--confidence", "1",
                 "--out", str(tmp_path / "o"), "--no-progress"])
    assert code == 2 and "--confidence" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
