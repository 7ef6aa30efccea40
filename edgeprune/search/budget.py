"""Greedy channel search under a predicted latency budget (NetAdapt-style, importance-weighted).

State: kept channels per group, starting from full width. Each step considers, for every
group, dropping it to its next lower allowed count (multiples of the group's channel
multiple, given by the caller); the step's cost is the importance it removes (the sum of the dropped channels'
scores, lowest first) and its gain the predicted latency it saves, read from the measured
table. The step with the least importance lost per millisecond saved is taken. A drop
that saves nothing (a flat stretch of the runtime's staircase) is never taken on its own:
each group's candidate is its smallest drop that reaches the next lower step of the
staircase, so plateaus are crossed whole and a model never stops mid-plateau.

Invariants: the returned counts' predicted latency is <= the budget; every group keeps at
least its minimum; an unreachable budget raises ``BudgetError`` naming the fastest
reachable prediction instead of returning a zero-width model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from edgeprune.errors import UserInputError
from edgeprune.measure.lut import channel_grid


class BudgetError(UserInputError):
    """The budget is below the fastest model the search can reach."""


@dataclass
class SearchResult:
    counts: list[int]
    predicted_ms: float
    retained_importance: float
    steps: int
    trace: list[dict[str, Any]]
    strategy: str = "greedy"
    candidates: list[dict[str, Any]] = field(default_factory=list)  # what arbitration compared (knapsack)
    winner: str = "greedy"
    why: str = ""
    importance: str = ""


def _sorted_scores(scores: Sequence[np.ndarray], normalize: bool) -> list[np.ndarray]:
    out = []
    for s in scores:
        s = np.asarray(s, dtype=np.float64)
        if normalize and s.mean() > 0:
            s = s / s.mean()
        out.append(np.sort(s))  # ascending: the lowest are dropped first
    return out


def allowed_counts(width: int, multiple: int, floor: int) -> list[int]:
    """The counts a group may keep: its channel grid at or above ``floor`` (at least its width)."""
    return [c for c in channel_grid(width, multiple) if c >= floor] or [width]


def kept_importance(ranked: Sequence[np.ndarray], counts: Sequence[int]) -> float:
    """The importance ``counts`` keeps: the sum of each group's first ``count`` scores (``ranked`` high to low)."""
    return float(sum(float(r[:c].sum()) for r, c in zip(ranked, counts)))


def _best_step(predictor, counts, allowed, ranked, current):
    """For each group, the smallest drop that saves predicted time; the cheapest of those."""
    best = None
    for g, options in enumerate(allowed):
        idx = options.index(counts[g])
        for lower in range(idx - 1, -1, -1):
            trial = list(counts)
            trial[g] = options[lower]
            saved = current - predictor.predict(trial)
            if saved > 1e-9:
                lost = float(ranked[g][trial[g]:counts[g]].sum())
                if best is None or lost / saved < best[0]:
                    best = (lost / saved, g, trial, saved, lost)
                break
    return best


def descend(predictor, counts: Sequence[int], allowed: Sequence[list[int]], ranked: Sequence[np.ndarray],
            budget_ms: float) -> tuple[list[int], float, list[dict[str, Any]]]:
    """Greedy steps down from ``counts`` (each on its group's ``allowed`` counts) until the prediction is within
    ``budget_ms``: (counts, predicted ms, trace). ``BudgetError`` when no step saves predicted time."""
    counts = [int(c) for c in counts]
    current = predictor.predict(counts)
    trace = [{"step": 0, "predicted_ms": current}]
    while current > budget_ms:
        step = _best_step(predictor, counts, allowed, ranked, current)
        if step is None:
            raise BudgetError(f"latency budget {budget_ms:.3f} ms cannot be met: the fastest model this search "
                              f"reaches is predicted at {current:.3f} ms",
                              "raise the budget, or lower the minimum width (--min-width SHARE)")
        _, g, counts, saved, lost = step
        current = predictor.predict(counts)
        trace.append({"step": len(trace), "group": g, "to": counts[g], "saved_ms": saved,
                      "importance_lost": lost, "predicted_ms": current})
    return counts, current, trace


def search_counts(predictor, widths: Sequence[int], scores: Sequence[np.ndarray], budget_ms: float,
                  multiple: int | Sequence[int], floors: Sequence[int], normalize: bool = True) -> SearchResult:
    """Per-group kept counts whose predicted latency is within ``budget_ms``.

    ``multiple``: one channel multiple for every group, or one per group.
    """
    ranked = [s[::-1] for s in _sorted_scores(scores, normalize)]  # descending: keep the first k
    mults = [int(multiple)] * len(widths) if isinstance(multiple, (int, np.integer)) else [int(m) for m in multiple]
    allowed = [allowed_counts(w, m, f) for w, m, f in zip(widths, mults, floors)]
    counts, current, trace = descend(predictor, [opts[-1] for opts in allowed], allowed, ranked, budget_ms)
    kept = kept_importance(ranked, counts)
    total = sum(float(r.sum()) for r in ranked)
    return SearchResult(counts, current, kept / total if total else 1.0, len(trace) - 1, trace)
