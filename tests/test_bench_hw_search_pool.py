"""bench/hw_search.py --pool: several runs' JSON (one seed each) make one mean ± std over all their seeds, and runs
that would double-count a seed or mix protocols are refused."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import load_bench_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hw():
    return load_bench_script("hw_search")


def _run(tmp: Path, name: str, seed: int, top1: dict[str, float], model: str = "resnet18", base_top1=0.92) -> Path:
    rows = [{"budget": 0.5, "seed": seed, "arm": arm, "top1": t, "top1_after_prune": t - 0.01,
             "measured_ms": 1.0 + 0.01 * i, "ratio_to_unpruned": 0.5, "macs": 50 + i}
            for i, (arm, t) in enumerate(top1.items())]
    result = {"command": f"python bench/hw_search.py --seeds {seed}", "date": f"2026-12-0{seed + 1}T00:00:00+00:00",
              "complete": True, "wall_min": 70.0, "model": model, "input": "1x1x96x96", "machine": "test box",
              "load": [1.0, 1.0, 1.0], "baseline_top1": base_top1,
              "args": {"weights": "w.pt", "data": "fashion-mnist", "ft_epochs": 0.15, "ft_lr": 0.01},
              "cases": [{"target": "x86", "runtime": "openvino", "multiple": 16, "table_s": 0.0, "anchor_ms": 2.0,
                         "baseline_final_ms": 2.0, "baseline_macs": 100, "rows": rows}]}
    d = tmp / name
    d.mkdir()
    (d / "hw_search.json").write_text(json.dumps(result))
    return d


def test_pool_takes_mean_and_std_over_every_runs_seeds(hw, tmp_path):
    a = _run(tmp_path, "a", 0, {"knapsack": 0.91, "uniform": 0.90})
    b = _run(tmp_path, "b", 1, {"knapsack": 0.93, "uniform": 0.90}, base_top1=0.94)
    c = _run(tmp_path, "c", 2, {"knapsack": 0.92, "uniform": 0.93})
    result = hw.pool([str(a), str(b), str(c / "hw_search.json")])
    summary = {s["arm"]: s for s in hw.summarise(result["cases"], None, result["baseline_top1"])}
    assert summary["knapsack"]["seeds"] == 3
    assert summary["knapsack"]["top1_mean"] == pytest.approx(92.0)
    assert summary["knapsack"]["top1_std"] == pytest.approx(1.0)  # sample std of 91, 93, 92
    assert summary["uniform"]["top1_mean"] == pytest.approx(91.0)
    assert summary["uniform"]["macs_ratio"] == pytest.approx(0.51)
    assert result["baseline_top1"] == pytest.approx((0.92 + 0.94 + 0.92) / 3)
    assert [p["baseline_top1"] for p in result["pooled"]] == [0.92, 0.94, 0.92]


def test_pool_refuses_a_seed_from_two_runs_and_other_models(hw, tmp_path):
    a = _run(tmp_path, "a", 0, {"knapsack": 0.91})
    again = _run(tmp_path, "again", 0, {"knapsack": 0.92})
    other = _run(tmp_path, "other", 1, {"knapsack": 0.92}, model="resnet20")
    with pytest.raises(ValueError, match="seed 0 is in both"):
        hw.pool([str(a), str(again)])
    with pytest.raises(ValueError, match="only runs of one protocol pool"):
        hw.pool([str(a), str(other)])
    with pytest.raises(ValueError, match="no hw_search.json"):
        hw.pool([str(a), str(tmp_path / "missing")])


def test_pool_cli_writes_the_report_and_fails_in_one_line(tmp_path):
    a = _run(tmp_path, "a", 0, {"knapsack": 0.91, "uniform": 0.90})
    b = _run(tmp_path, "b", 1, {"knapsack": 0.93, "uniform": 0.90})
    out = tmp_path / "pooled"
    ok = subprocess.run([sys.executable, str(ROOT / "bench" / "hw_search.py"), "--pool", f"{a},{b}", "--out", str(out)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    md = (out / "hw_search.md").read_text()
    assert "Pooled from 2 runs" in md and "92.00 ± 1.41" in md
    assert json.loads((out / "hw_search.json").read_text())["summary"][0]["seeds"] == 2
    assert (out / "hw_search.png").stat().st_size > 0
    bad = subprocess.run([sys.executable, str(ROOT / "bench" / "hw_search.py"), "--pool", f"{a},{a}", "--out",
                          str(tmp_path / "bad")], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "seed 0 is in both" in bad.stderr
    no_out = subprocess.run([sys.executable, str(ROOT / "bench" / "hw_search.py"), "--pool", f"{a},{b}"],
                            capture_output=True, text=True)  # would overwrite bench/results' own report
    assert no_out.returncode == 2 and "--pool needs --out" in no_out.stderr
    not_ours = tmp_path / "other.json"
    not_ours.write_text(json.dumps({"cases": []}))
    wrong = subprocess.run([sys.executable, str(ROOT / "bench" / "hw_search.py"), "--pool", f"{a},{not_ours}", "--out",
                            str(tmp_path / "wrong")], capture_output=True, text=True)
    assert wrong.returncode == 2 and "lacks the field" in wrong.stderr
