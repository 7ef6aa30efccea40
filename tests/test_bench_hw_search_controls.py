"""bench/hw_search.py's equal-training controls: uniform+ and tp+ train on top of the common fine-tune as long as
the search's winner trained inside the search (at least the progressive schedule), search+ makes up a one-shot
winner's shortfall, and ``--controls`` redoes stored controls that trained less than the winner."""
from __future__ import annotations

import json
from argparse import Namespace
from types import SimpleNamespace

import pytest

from tests.conftest import load_bench_script

N = 60000  # Fashion-MNIST's training set


@pytest.fixture(scope="module")
def hw():
    return load_bench_script("hw_search")


def _search(trained: int, winner: str = "w") -> dict:
    return {"winner": winner, "candidates": [{"name": "other", "trained_images": 99999},
                                             {"name": winner, "trained_images": trained}]}


def test_controls_train_as_long_as_the_winner_and_at_least_the_schedule(hw):
    from edgeprune.search.settings import SearchSettings

    schedule = SearchSettings().progressive_images
    bench = SimpleNamespace(train_ds=range(N))
    equal = lambda s: hw.Bench.equal_training_epochs(bench, s)
    # a progressive winner that also had the finalists' mini-batches trained past the schedule: the controls match it
    assert equal(_search(schedule + 2560)) == pytest.approx((schedule + 2560) / N)
    # a one-shot winner (finalist batches only): the controls get the schedule, search+ the difference
    assert equal(_search(2560)) == pytest.approx(schedule / N)
    assert hw.winner_trained_images(_search(2560)) == 2560
    # a row whose winner is not among its candidates, or that has none: the schedule
    assert equal({"winner": "gone", "candidates": [{"name": "x", "trained_images": 10 ** 6}]}) == pytest.approx(schedule / N)
    assert equal({}) == pytest.approx(schedule / N)


def test_controls_flag_redoes_controls_that_trained_less_than_the_winner(hw, tmp_path, monkeypatch):
    from edgeprune.search.settings import SearchSettings

    asked = []

    class FakeBench(hw.Bench):
        """The real Bench's control logic over a fake fine-tune that records the epochs it was asked for."""
        def __init__(self, args, model, train_ds, test_ds):
            self.args, self.train_ds = args, train_ds

        def rebuild(self, row, multiple):
            return row["arm"]

        def finetune(self, model, seed, extra_epochs=0.0):
            asked.append(extra_epochs)
            return {"top1_after_prune": 0.5, "top1": 0.9}

    schedule = SearchSettings().progressive_images
    monkeypatch.setattr(hw, "Bench", FakeBench)
    monkeypatch.setattr(hw, "load_inputs", lambda args: (None, None, range(N), None))
    monkeypatch.setattr(hw, "publish", lambda result, out, args: (out / "hw_search.json").write_text(json.dumps(result)))

    def cell(seed, trained, control_extra):
        rows = [{"budget": 0.35, "seed": seed, "arm": "knapsack", "name": f"k{seed}", "top1": 0.91,
                 **_search(trained)},
                {"budget": 0.35, "seed": seed, "arm": "uniform", "name": f"u{seed}", "top1": 0.90},
                {"budget": 0.35, "seed": seed, "arm": "tp", "name": f"t{seed}", "top1": 0.89}]
        if control_extra is not None:
            rows += [{"budget": 0.35, "seed": seed, "arm": arm, "name": f"{arm}{seed}", "top1": 0.5,
                      "extra_epochs": control_extra} for arm in ("uniform+", "tp+")]
        return rows
    rows = (cell(0, schedule + 2560, schedule / N)   # controls short of the winner: redone
            + cell(1, 2560, schedule / N)            # a one-shot winner: the schedule was right, kept
            + cell(2, schedule, None))               # no controls yet: added
    (tmp_path / "hw_search.json").write_text(json.dumps({"cases": [{"target": "x86", "multiple": 16, "rows": rows}]}))
    args = Namespace(out=str(tmp_path), targets="x86", budget_list=[0.35], ft_epochs=0.15)
    assert hw.add_controls(args) == 0
    out = json.loads((tmp_path / "hw_search.json").read_text())["cases"][0]["rows"]
    controls = {(r["seed"], r["arm"]): r for r in out if r["arm"] in ("uniform+", "tp+")}
    assert len(controls) == 6 and len(out) == 15  # one pair per seed: the short pair replaced, not added to
    assert controls[(0, "uniform+")]["extra_epochs"] == pytest.approx((schedule + 2560) / N)
    assert controls[(0, "tp+")]["top1"] == 0.9  # the redone fine-tune's, not the stored 0.5
    assert controls[(1, "uniform+")]["top1"] == 0.5 and controls[(1, "tp+")]["extra_epochs"] == pytest.approx(schedule / N)
    assert controls[(2, "uniform+")]["extra_epochs"] == pytest.approx(schedule / N)
    assert sorted(asked) == pytest.approx(sorted([schedule / N] * 2 + [(schedule + 2560) / N] * 2))
