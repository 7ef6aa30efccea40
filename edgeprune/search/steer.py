"""Measuring the budget search's candidates on the target, and steering its schedules by those measurements.

The optimiser finds the predictor's errors, so every candidate is measured on the target (paired: see
``hardware.HardwareSearch.measure_models``) and every figure refits the predictor. Each of the three schedules
(``STEERED``: the iterative knapsack, the progressive knapsack, the progressive uniform) is steered by its own
measurements (``steer``), so that it neither misses the budget nor lands far under it and gives away latency the
budget allows.

Invariants: every candidate is measured at least once; one whose first figure is within ``near / 2`` of the budget
is measured twice and judged on the mean; the rounds stop after ``1 + refits``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from edgeprune.search.candidate import Candidate

if TYPE_CHECKING:
    from edgeprune.search.allocate import Allocator

STEERED = ("knapsack", "progressive", "uniform")  # the schedules each steered by their own measurements


def steer(points: list[tuple[list[int], float]], budget_ms: float, near: float, predict) -> float | None:
    """The next aim (in ms of ``predict``, the refitted predictor) of a schedule whose candidates measured
    ``points`` ((counts, ms) pairs), or None when it needs no other round: its closest candidate within the
    budget is at most ``near`` under it (or ``near`` is 0 and one is within it).

    It aims at ``1 - near / 2`` of the budget. With a candidate on each side of the budget, by the secant
    through the two closest, each priced again by the refitted predictor (so both ends are in the same units:
    aims from earlier rounds are in the units of a predictor that has since moved); with one side only, by
    scaling the closest candidate's predicted latency by the ratio of that target to its measurement. So a
    miss aims lower, and a candidate far under the budget aims back up instead of giving away latency the
    budget allows (on ResNet-20 at 0.5x on OpenVINO the round after a miss landed 12-22% under,
    bench/RESULTS.md §5)."""
    if not points:
        return None
    under = [p for p in points if p[1] <= budget_ms]
    over = [p for p in points if p[1] > budget_ms]
    if under and (near <= 0 or max(m for _, m in under) >= budget_ms * (1 - near)):
        return None
    target = budget_ms * (1 - near / 2)
    lo = max(under, key=lambda p: p[1]) if under else None
    hi = min(over, key=lambda p: p[1]) if over else None
    if lo is not None and hi is not None:
        p_lo, p_hi = predict(lo[0]), predict(hi[0])
        if p_hi > p_lo:
            return p_lo + (target - lo[1]) * (p_hi - p_lo) / (hi[1] - lo[1])
    counts, ms = lo if lo is not None and (hi is None or budget_ms - lo[1] < hi[1] - budget_ms) else hi
    return predict(counts) * target / ms


def schedule_kind(cand: Candidate) -> str | None:
    """Which steered schedule (``STEERED``) proposed ``cand``, or None: the iterative knapsack (its channels on
    the original weights; the trained twin has the same counts), the progressive knapsack, the progressive
    uniform."""
    if cand.name.startswith("knapsack (") and "one shot" not in cand.name and cand.model is None:
        return "knapsack"
    if cand.model is not None and cand.family in ("progressive", "uniform"):
        return cand.family
    return None


def close_calls(pool: list[Candidate], budget_ms: float, near: float) -> list[Candidate]:
    """Candidates measured once whose figure is within ``near / 2`` of the budget, on either side: the
    search's two paired rounds decide those by noise (on ResNet-18 at 96 px the same counts, a candidate and
    its trained twin, measured 1.983 and 1.962 ms in one round, either side of a 1.977-ms budget), so they
    are measured once more before arbitration."""
    band = near / 2
    return [c for c in pool if len(c.measurements) == 1 and abs(c.measured_ms / budget_ms - 1) <= band]


def measure(alloc: Allocator, fresh: list[Candidate], again: list[Candidate], models: dict[str, nn.Module]
            ) -> None:
    """Measure ``fresh`` candidates (building their sub-networks into ``models``) together with ``again``
    (measured before: their figure becomes the mean of both), and refit the predictor on every figure."""
    batch = {c.name: alloc.subnet(c) for c in fresh}
    models.update(batch)
    batch.update({c.name: models[c.name] for c in again})
    measured = alloc.hs.measure_models(batch, rounds=2)
    for c in fresh + again:
        c.measurements = c.measurements + [measured[c.name]]  # a new list: ``replace`` copies share the old one
        alloc.hs.samples.append((list(c.counts), measured[c.name]))
    alloc.hs.predictor.calibrate(alloc.hs.samples)


def measured_candidates(alloc: Allocator, budget_ms: float
                        ) -> tuple[list[Candidate], list[dict[str, Any]], dict[str, nn.Module]]:
    """``alloc``'s candidates, each measured on the target (``hs.measure_models``: paired against the unpruned model).

    The optimiser finds the predictor's errors, so every measurement also refits the predictor. Each of the
    three schedules (the iterative knapsack, the progressive knapsack, the progressive uniform) is steered by
    its own measurements (``steer``): while its closest candidate misses the budget, or sits more than
    ``near`` under it, another round (up to ``refits``) reruns it at a new aim; the one-shot candidates
    (greedy, uniform, random) are regenerated with the refitted predictor in every round, and alone call a
    round when more than half of them miss. Without its own aim, a uniform schedule that lands a hair over
    the budget would be dropped and the knapsack would win arbitration by default, not by its allocation;
    without aiming back up, a round after a miss can land far under the budget and give accuracy away for
    latency the budget allowed. The candidates of every round are pooled; one whose figure lands within
    ``near / 2`` of the budget (either side) is measured once more, with the next round or at the end, and
    judged on the mean of both (``close_calls``)."""
    pool: list[Candidate] = []
    models: dict[str, nn.Module] = {}
    seen: set = set()
    trace: list[dict[str, Any]] = []
    aims = {kind: budget_ms for kind in STEERED}
    points: dict[str, list[Candidate]] = {kind: [] for kind in STEERED}
    active = set(STEERED)
    for rnd in range(1 + max(0, alloc.s.refits)):
        cands, steps = alloc.candidates(budget_ms, aims=aims, schedules=frozenset(active), seen=frozenset(seen))
        trace = trace or steps
        fresh = []
        for c in cands:
            if c.key in seen:
                continue
            seen.add(c.key)
            if rnd:
                c.name = f"{c.name} (refit {rnd})"
                c.add_note("after refitting the predictor on the measurements")
            fresh.append(c)
        if not fresh:
            break
        measure(alloc, fresh, close_calls(pool, budget_ms, alloc.s.near), models)
        pool += fresh
        ran = {schedule_kind(c): c for c in fresh}
        for kind in list(active):
            if kind not in ran:  # nothing new from it (painted into a corner, or the same counts again)
                active.discard(kind)
                continue
            points[kind].append(ran[kind])
            aim = steer([(c.counts, c.measured_ms) for c in points[kind]], budget_ms, alloc.s.near,
                        alloc.hs.predictor.predict)
            if aim is None:
                active.discard(kind)
            else:
                aims[kind] = aim
        others = [c for c in fresh if schedule_kind(c) is None]
        if not active and sum(c.measured_ms <= budget_ms for c in others) * 2 >= len(others):
            break
    last = close_calls(pool, budget_ms, alloc.s.near)
    if last:
        measure(alloc, [], last, models)
    return pool, trace, models
