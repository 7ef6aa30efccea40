"""The build's checks: value ranges of a ``BuildConfig`` and the gates a finished build must pass.

Invariants: the API gets the same range checks as the command line's flags (one line naming the
flag and its range); a finished build that misses a gate (latency budget by measurement, the
accuracy bar) raises ``BuildGateFailed`` (exit 1) carrying the written report, so the command line
can print the figures and Python callers fail the same way.
"""
from __future__ import annotations

import math
from typing import Any

from edgeprune.errors import GateFailed, UserInputError


class BuildGateFailed(GateFailed):
    """A finished build missed a gate (latency budget, accuracy bar); ``report`` holds the figures."""

    def __init__(self, message: str, report: dict[str, Any], hint: str | None = None):
        super().__init__(message, hint)
        self.report = report


# field: (lowest, highest, lowest excluded) — the API gets the same checks as the command line's flags
_RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "finetune_epochs": (0, 10000, False), "lr": (0, None, True), "batch_size": (1, 65536, False),
    "ratio": (0, 1, True), "kd_alpha": (0, 1, False), "kd_temperature": (0, None, True), "rounds": (1, 1000, False),
    "min_seconds": (0, 3600, True), "warmup_s": (0, 3600, False), "holdout": (1, None, False),
    "calib": (1, None, False), "budget_attempts": (1, 20, False), "min_width": (0, 1, False),
    "max_accuracy_drop": (0, 100, False), "eval_limit": (1, None, False), "seed": (0, None, False),
}


def check_ranges(cfg: Any) -> None:
    for name, (low, high, low_open) in _RANGES.items():
        value = getattr(cfg, name)
        if value is None and name in ("max_accuracy_drop", "eval_limit"):
            continue
        flag = "--" + name.replace("_", "-")
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (low is None or (value > low if low_open else value >= low)) and (high is None or value <= high)
        if not ok:
            span = f"{'(' if low_open else '['}{low}, {'inf' if high is None else high}]"
            raise UserInputError(f"{flag} must be a number in {span}, got {value!r}")


def gates(cfg: Any, search: dict[str, Any] | None, base: dict, pruned: dict) -> dict[str, Any]:
    """The build's own gates, judged on the final figures: latency budget and accuracy bar."""
    gates: dict[str, Any] = {}
    if search:
        gates["latency_budget"] = {"passed": bool(search["met"]), "budget_ms": search["budget_ms"],
                                   "measured_ms": search["final_measured_ms"]}
    if cfg.max_accuracy_drop is not None:
        drop = 100.0 * (base["accuracy"] - pruned["accuracy"])
        gates["accuracy"] = {"passed": drop <= cfg.max_accuracy_drop, "max_drop_points": cfg.max_accuracy_drop,
                             "drop_points": round(drop, 3), "baseline": base["accuracy"], "pruned": pruned["accuracy"]}
    return gates


def check_gates(report: dict[str, Any]) -> None:
    """Raise ``BuildGateFailed`` (exit 1) with the figures when a finished build missed a gate."""
    gates = report.get("gates") or {}
    acc = gates.get("accuracy")
    if acc and not acc["passed"]:
        raise BuildGateFailed(f"the pruned model's top-1 fell {acc['drop_points']:.2f} points ({acc['baseline']:.4f} -> "
                              f"{acc['pruned']:.4f}), over the --max-accuracy-drop of {acc['max_drop_points']:g}",
                              report, "prune less (--ratio, --budget), fine-tune longer (--finetune-epochs), or "
                                      "distil (--kd-alpha)")
    lat = gates.get("latency_budget")
    if lat and not lat["passed"]:
        search = report["search"]
        spread = max((n or {}).get("spread", 1.0) for n in report["comparison"]["noise"].values())
        raise BuildGateFailed(f"the final build measured {lat['measured_ms']:.3f} ms, over the {lat['budget_ms']:.3f} ms "
                              f"budget (round-to-round spread {spread:.2f}x; the search's own check measured "
                              f"{search['attempts'][-1]['measured_ms']:.3f} ms)", report,
                              "rerun on a quieter machine or with more --rounds, or tighten the budget")
