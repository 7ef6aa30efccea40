"""bench/methods_report.py renders the methods benchmark's Markdown purely from its JSON.

The fixture ``tests/data/methods-report.json`` is the JSON of a real ``bench/methods.py --quick`` run (mini
subset, numbers meaningless); ``methods-report.md`` is its stored render. After an intended change of the
report, regenerate the stored render with:
    python -c "import json,sys; sys.path.insert(0,'bench'); import methods_report as m; \
open('tests/data/methods-report.md','w').write(m.render(json.load(open('tests/data/methods-report.json'))))"
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from tests.conftest import load_bench_script

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def report():
    return load_bench_script("methods_report")


@pytest.fixture
def res():
    return json.loads((DATA / "methods-report.json").read_text())


def _set_acc_ft(res: dict, name: str, target: float, value: float) -> None:
    for seed in res["seeds"].values():
        for r in seed["rows"]:
            if r["name"] == name and r["target"] == target:
                r["acc_ft"] = value


def test_render_equals_the_stored_render(report, res):
    assert report.render(res) == (DATA / "methods-report.md").read_text()


def test_figures_come_from_the_json(report, res):
    md = report.render(res)
    base = res["baseline"]["acc"]
    assert f"top-1 {100 * base:.2f}% on the {res['test_size']} test images" in md
    assert f"wall time {res['seconds'] / 60:.1f} min" in md and res["command"] in md
    assert res["environment"]["cpu"] in md
    # a changed figure in the JSON shows up, with its mean and std over the seeds, and its gap to the baseline
    _set_acc_ft(res, "thinet", 0.5, 0.0)
    res["seeds"]["1"]["rows"][[r["name"] for r in res["seeds"]["1"]["rows"]].index("thinet")]["acc_ft"] = 0.5
    md2 = report.render(res)
    assert "| 25.00 ± 35.36 |" in md2 and f"| {100 * (0.25 - base):+.2f} |" in md2
    assert md2 != md
    # the sweep table and the chosen lambda
    for x in res["sweep"]:
        assert f"{x['small_gamma_share_before']:.3f} -> {x['small_gamma_share_after']:.3f}" in md
    assert f"| {res['slim_lambda']:g} (chosen) |" in md


def test_verdicts_follow_the_numbers(report, res):
    base = res["baseline"]["acc"]
    for name in ("slim", "gate", "thinet"):
        _set_acc_ft(res, name, 0.5, base - 0.02)
    md = report.render(res)
    assert "within 1 point of the baseline" in md and "pts: **not met**" in md
    for name in ("slim", "gate", "thinet"):
        _set_acc_ft(res, name, 0.5, base - 0.005)
    md = report.render(res)
    assert "pts: **met**" in md
    assert "50% MACs cut: slim" in md and "(-0.50 pts" in md and "): reproduced." in md
    # nobody beats Torch-Pruning when every seed method is at 0%
    for name in ("slim", "gate", "thinet"):
        for t in res["settings"]["targets"]:
            _set_acc_ft(res, name, t, 0.0)
    assert "equal measured latency (the most accurate" in report.render(res)
    assert report.render(res).rstrip().endswith("**not met**.")


def test_plots_are_written_from_the_json(report, res, tmp_path):
    paths = report.plots(copy.deepcopy(res), tmp_path)
    assert [p.name for p in paths] == ["methods-gamma.png", "methods-latency.png"]
    assert all(p.stat().st_size > 10_000 and p.read_bytes()[:4] == b"\x89PNG" for p in paths)
