"""Latency-saliency knapsack (HALP, Shen et al. NeurIPS 2022): keep the most importance a latency budget allows.

Items are channel *blocks* of a group's channel multiple, most important first: group g keeping
c channels keeps the c highest-scoring ones, worth ``value_g(c)`` = their summed score (after
per-group normalisation when the importance asks for it). Its *weight* is the predicted latency
of the whole model with g at c and every other group at its *current* width (``current``), minus
the same at g's narrowest option: the latency table is read with the neighbours' current widths,
as HALP does, so a block's weight is what removing it saves in the model as it stands. Choosing
one count per group to maximise the summed value under the capacity is a multiple-choice knapsack,
solved exactly by dynamic programming over ``resolution`` latency bins (weights rounded *up*, so
the chosen counts never exceed the capacity of the separable model).

The separable model (one group changed at a time, around ``current``) is exact for a single group's
change; for several it can be off where two changed groups meet in one layer. The caller checks the
true prediction and shrinks the capacity by the overshoot (``solve``), and the iterative schedule
re-linearises around each step's result.

Invariants: every count is on its group's allowed grid (multiples of the group's channel multiple,
the group's full width, at least its floor, never more than ``current``); no group is emptied; no
group loses more than ``max_cut`` of its full width unless the budget cannot be met otherwise
(then the cap is relaxed in steps of 0.1 and the result says so); the returned prediction is
within the budget, or ``BudgetError`` names the fastest reachable prediction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from edgeprune.measure.lut import channel_grid
from edgeprune.search.budget import BudgetError, SearchResult, allowed_counts, descend, kept_importance


@dataclass
class Knapsack:
    """One multiple-choice knapsack instance: per group, its options, values and weights."""

    options: list[list[int]]
    values: list[np.ndarray]
    weights: list[np.ndarray]   # ms, >= 0 (each group's narrowest option weighs 0)
    capacity: float             # ms available above every group's narrowest option
    meta: dict[str, Any] = field(default_factory=dict)


def ranked_scores(scores: Sequence[np.ndarray], normalize: bool) -> list[np.ndarray]:
    """Per group, scores sorted high to low (divided by the group's mean first when ``normalize``)."""
    out = []
    for s in scores:
        s = np.asarray(s, dtype=np.float64)
        if normalize and s.size and s.mean() > 0:
            s = s / s.mean()
        out.append(np.sort(s)[::-1])
    return out


def options_for(width: int, multiple: int, floor: int, current: int, max_cut: float) -> list[int]:
    """Counts group may take: on its grid, >= floor and >= (1 - max_cut) of width, <= current."""
    lowest = max(floor, math.ceil(width * (1.0 - max_cut) - 1e-9))
    grid = [c for c in channel_grid(width, multiple) if lowest <= c <= current]
    if not grid:  # the cap or the floor sits above every allowed count below current: stay
        grid = [current]
    return grid


def build(predictor, widths: Sequence[int], ranked: Sequence[np.ndarray], budget_ms: float,
          multiples: Sequence[int], floors: Sequence[int], current: Sequence[int], max_cut: float,
          reference: Sequence[int] | None = None) -> Knapsack:
    """The knapsack with options up to ``current``, latency linearised around ``reference`` (default: current)."""
    current = [int(c) for c in current]
    ref = current if reference is None else [int(c) for c in reference]
    base = predictor.predict(ref)
    options, values, weights, narrowest = [], [], [], []
    for g, (w, m, f) in enumerate(zip(widths, multiples, floors)):
        opts = options_for(w, m, f, current[g], max_cut)
        cum = np.concatenate([[0.0], np.cumsum(ranked[g])])
        lat = []
        for c in opts:
            trial = list(ref)
            trial[g] = c
            lat.append(predictor.predict(trial) - base)
        lat = np.asarray(lat)
        narrowest.append(float(lat.min()))
        options.append(opts)
        values.append(np.asarray([cum[c] for c in opts]))
        weights.append(lat - lat.min())
    capacity = budget_ms - base - sum(narrowest)
    return Knapsack(options, values, weights, capacity, {"base_ms": base, "budget_ms": budget_ms})


def solve_dp(ks: Knapsack, resolution: int = 1000) -> list[int] | None:
    """The option index per group maximising value with summed weight <= capacity; None if infeasible."""
    if ks.capacity < 0:
        return None
    unit = ks.capacity / resolution if ks.capacity > 0 else 1.0
    bins = resolution
    neg = -np.inf
    best = np.full(bins + 1, neg)
    best[0] = 0.0
    choice, bin_weights = [], []
    for vals, wts in zip(ks.values, ks.weights):
        wb = np.ceil(wts / unit - 1e-9).astype(int) if ks.capacity > 0 else np.where(wts > 1e-12, bins + 1, 0)
        bin_weights.append(wb)
        new = np.full(bins + 1, neg)
        pick = np.full(bins + 1, -1, dtype=int)
        for k, (v, b) in enumerate(zip(vals, wb)):
            if b > bins:
                continue
            cand = np.full(bins + 1, neg)
            cand[b:] = best[:bins + 1 - b] + v
            better = cand > new
            new[better] = cand[better]
            pick[better] = k
        best = new
        choice.append(pick)
    if not np.isfinite(best).any():
        return None
    # walk back from the best end bin
    end = int(np.argmax(best))
    picks = []
    for g in range(len(ks.values) - 1, -1, -1):
        k = int(choice[g][end])
        picks.append(k)
        end -= int(bin_weights[g][k])
    return picks[::-1]


def solve(predictor, widths: Sequence[int], scores: Sequence[np.ndarray], budget_ms: float,
          multiples: Sequence[int], floors: Sequence[int], *, current: Sequence[int] | None = None,
          normalize: bool = True, max_cut: float = 0.5, resolution: int = 1000,
          tries: int = 8) -> SearchResult:
    """Counts (at most ``current``) whose predicted latency is within ``budget_ms``, most importance kept."""
    current = list(widths) if current is None else [int(c) for c in current]
    ranked = ranked_scores(scores, normalize)
    total = sum(float(r.sum()) for r in ranked) or 1.0
    trace: list[dict[str, Any]] = []
    tries = max(tries, 2)
    cut = max_cut
    last: list[int] | None = None  # the last knapsack answer, kept for the greedy descent (budget.descend)
    while True:
        lowest = [options_for(w, m, f, c, cut)[0] for w, m, f, c in zip(widths, multiples, floors, current)]
        best: tuple[float, list[int], float] | None = None
        ref, aim = list(current), budget_ms
        for _ in range(tries):
            ks = build(predictor, widths, ranked, aim, multiples, floors, current, cut, reference=ref)
            picks = solve_dp(ks, resolution)
            if picks is None:
                if ref == lowest:
                    break  # not even every group at its narrowest fits: relax the cap
                ref = lowest  # the model around ``ref`` over-estimates what deep cuts cost: look from below
                continue
            counts = [opts[k] for opts, k in zip(ks.options, picks)]
            last = counts
            predicted = predictor.predict(counts)
            value = float(sum(v[k] for v, k in zip(ks.values, picks)))
            trace.append({"max_cut": cut, "aim_ms": aim, "capacity_ms": ks.capacity, "predicted_ms": predicted})
            if predicted <= budget_ms + 1e-12:
                if best is None or value > best[0] + 1e-12:
                    best = (value, counts, predicted)
                if counts == ref:
                    break  # a fixed point: re-linearising changes nothing
                aim = budget_ms
            else:
                aim -= (predicted - budget_ms) * 1.05 + 1e-9  # the separable model under-estimated: ask for less
            ref = counts
        if best is not None:
            return SearchResult(best[1], best[2], best[0] / total, len(trace), trace)
        if cut >= 1.0 - 1e-9:
            fastest = predictor.predict(lowest)
            if fastest <= budget_ms and last is not None:  # the re-linearisation did not settle: trim greedily
                allowed = [allowed_counts(w, m, f) for w, m, f in zip(widths, multiples, floors)]
                counts, predicted, _ = descend(predictor, last, allowed, ranked, budget_ms)
                trace.append({"max_cut": cut, "aim_ms": budget_ms, "capacity_ms": budget_ms,
                              "predicted_ms": predicted, "trimmed": True})
                return SearchResult(counts, predicted, kept_importance(ranked, counts) / total, len(trace), trace)
            raise BudgetError(f"latency budget {budget_ms:.3f} ms cannot be met: the fastest model this search "
                              f"reaches is predicted at {fastest:.3f} ms",
                              "raise the budget, or lower the minimum width (--min-width SHARE)")
        cut = min(1.0, round(cut + 0.1, 6))  # relax the per-group cap: the budget needs deeper cuts
