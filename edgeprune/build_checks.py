"""The build's checks: value ranges of a ``BuildConfig`` and the gates a finished build must pass.

Invariants: the API gets the same range checks as the command line's flags (one line naming the
flag and its range); a finished build that misses a gate (the accuracy bar, or a latency budget the
final interleaved measurement decided was "missed") raises ``BuildGateFailed`` (exit 1) carrying the
written report, so the command line can print the figures and Python callers fail the same way. A
latency budget the measurement could not decide at the stated confidence within ``--max-rounds``
("undecided": over or under by less than the noise) raises ``BuildUndecided`` (exit 3), also with the
report; a missed accuracy bar wins over it. The budget's decision is never judged on one number: it is
``decide.answer`` on the per-round figures (p50 vs a budget in ms, or the paired ratio pruned/baseline
vs a share such as 0.6x).
"""
from __future__ import annotations

import math
import statistics
from typing import Any

from edgeprune.errors import GateFailed, UserInputError
from edgeprune.measure.decide import describe, spread
from edgeprune.measure.settings import RoundPolicy


class BuildGateFailed(GateFailed):
    """A finished build missed a gate (latency budget, accuracy bar); ``report`` holds the figures."""

    def __init__(self, message: str, report: dict[str, Any], hint: str | None = None):
        super().__init__(message, hint)
        self.report = report


class BuildUndecided(BuildGateFailed):
    """The latency budget is within the measurement noise: neither met nor missed at the stated confidence."""

    exit_code = 3


# field: (lowest, highest, lowest excluded) — the API gets the same checks as the command line's flags
_RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "finetune_epochs": (0, 10000, False), "lr": (0, None, True), "batch_size": (1, 65536, False),
    "ratio": (0, 1, True), "kd_alpha": (0, 1, False), "kd_temperature": (0, None, True), "rounds": (1, 1000, False),
    "min_seconds": (0, 3600, True), "warmup_s": (0, 3600, False), "holdout": (1, None, False),
    "calib": (1, None, False), "budget_attempts": (1, 20, False), "min_width": (0, 1, False),
    "max_accuracy_drop": (0, 100, False), "eval_limit": (1, None, False), "seed": (0, None, False),
    "search_steps": (1, 100, False), "search_step_batches": (0, 100000, False), "search_candidates": (0, 100, False),
    "max_cut": (0, 1, True), "search_holdout": (10, 1000000, False), "search_refits": (0, 10, False),
    "search_near": (0, 0.5, False),
    "search_finalists": (0, 100, False), "search_finalist_batches": (0, 100000, False),
    "search_calibration": (0, 100, False), "search_progressive_steps": (0, 100, False),
    "search_settle": (0, 1, False),
    "bar_probes": (1, 20, False),
}


_FLAGS = {"holdout": "--holdout-images", "calib": "--calib-images", "warmup_s": "warmup_s"}


def check_ranges(cfg: Any) -> None:
    for name, (low, high, low_open) in _RANGES.items():
        value = getattr(cfg, name)
        if value is None and name in ("max_accuracy_drop", "eval_limit"):
            continue
        flag = _FLAGS.get(name, "--" + name.replace("_", "-"))
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (low is None or (value > low if low_open else value >= low)) and (high is None or value <= high)
        if not ok:
            span = f"{'(' if low_open else '['}{low}, {'inf' if high is None else high}]"
            raise UserInputError(f"{flag} must be a number in {span}, got {value!r}")
    RoundPolicy.resolve(cfg.rounds, getattr(cfg, "max_rounds", None), getattr(cfg, "confidence", None))


def budget_gate(search: dict[str, Any], decision: dict[str, Any] | None, base: dict, pruned: dict) -> dict[str, Any]:
    """The latency budget judged by the final interleaved measurement's answer (``decide.answer``).

    ``base``/``pruned``: the report entries (``latency_rounds_p50_ms``: their per-round p50s, same rounds).
    Without an answer (a caller that measured no question) the median p50 is compared with the budget.
    """
    rounds_p = pruned.get("latency_rounds_p50_ms") or [pruned["latency"]["p50_ms"]]
    rounds_b = base.get("latency_rounds_p50_ms") or [base["latency"]["p50_ms"]]
    measured = statistics.median(rounds_p)
    gate: dict[str, Any] = {"budget_arg": search.get("budget_arg"), "budget_ms": search["budget_ms"],
                            "measured_ms": measured, "baseline_ms": statistics.median(rounds_b),
                            "search_measured_ms": search.get("measured_ms")}
    if decision is None:
        met = measured <= search["budget_ms"]
        return {**gate, "passed": met, "decision": "met" if met else "missed", "interval": [None, None],
                "unit": "ms", "rounds": len(rounds_p), "spread": max(spread(rounds_p), spread(rounds_b))}
    q = decision["question"]
    if q["kind"] == "within_share":  # the budget in ms at the baseline measured in these same rounds
        gate.update(share=q["threshold"], ratio=decision["estimate"], budget_ms=q["threshold"] * gate["baseline_ms"])
    return {**gate, "passed": decision["decision"] == "met", "decision": decision["decision"],
            "interval": decision["interval"], "unit": decision["unit"], "estimate": decision["estimate"],
            "threshold": q["threshold"], "confidence": decision["confidence"], "rounds": decision["rounds"],
            "max_rounds": decision["max_rounds"], "spread": decision["spread"], "sentence": describe(decision)}


def gates(cfg: Any, search: dict[str, Any] | None, base: dict, pruned: dict,
          decision: dict[str, Any] | None = None) -> dict[str, Any]:
    """The build's own gates, judged on the final figures: latency budget (by ``decision``) and accuracy bar."""
    gates: dict[str, Any] = {}
    if search:
        gates["latency_budget"] = budget_gate(search, decision, base, pruned)
    if cfg.max_accuracy_drop is not None:
        drop = 100.0 * (base["accuracy"] - pruned["accuracy"])
        gates["accuracy"] = {"passed": drop <= cfg.max_accuracy_drop, "max_drop_points": cfg.max_accuracy_drop,
                             "drop_points": round(drop, 3), "baseline": base["accuracy"], "pruned": pruned["accuracy"]}
    return gates


def _figures(lat: dict[str, Any]) -> str:
    """The budget's figures in words: what was compared, the interval, the rounds, the spread."""
    if lat.get("sentence"):
        return lat["sentence"]
    return f"{lat['rounds']} round(s), round-to-round spread {lat['spread']:.2f}x"


def check_gates(report: dict[str, Any]) -> None:
    """Raise ``BuildGateFailed`` (exit 1) when a finished build missed a gate, ``BuildUndecided`` (exit 3) when
    its latency budget is within the measurement noise; both carry the report and the figures."""
    gates = report.get("gates") or {}
    acc = gates.get("accuracy")
    if acc and not acc["passed"]:
        raise BuildGateFailed(f"the pruned model's top-1 fell {acc['drop_points']:.2f} points ({acc['baseline']:.4f} -> "
                              f"{acc['pruned']:.4f}), over the --max-accuracy-drop of {acc['max_drop_points']:g}",
                              report, "prune less (--ratio, --budget), fine-tune longer (--finetune-epochs), or "
                                      "distil (--kd-alpha)")
    lat = gates.get("latency_budget")
    if not lat or lat["passed"]:
        return
    search_said = (f"; the search's own check measured {lat['search_measured_ms']:.3f} ms"
                   if lat.get("search_measured_ms") is not None else "")
    if lat["decision"] == "undecided":
        rounds = lat.get("max_rounds") or lat["rounds"]
        raise BuildUndecided(f"the latency budget is undecided: the pruned model measured {lat['measured_ms']:.3f} ms "
                             f"against the {lat['budget_ms']:.3f} ms budget, a difference within this machine's noise "
                             f"({_figures(lat)}{search_said})", report,
                             f"measure longer (--max-rounds above {rounds}), on a quieter machine, or with fewer "
                             "--threads than cores; the build is written")
    raise BuildGateFailed(f"the final build measured {lat['measured_ms']:.3f} ms, over the {lat['budget_ms']:.3f} ms "
                          f"budget ({_figures(lat)}{search_said})", report,
                          "tighten the search (a lower --budget or more --budget-attempts), "
                          "or rerun on a quieter machine")
