"""Adaptive sampling of a latency-table row: measure more where linear interpolation is wrong.

A row is measured on a coarse grid first. Each interior measured point is compared with the
linear interpolation of its two neighbours along one axis (leave-one-out); where they differ
by more than ``tol`` (10%) of the interpolation, latency is not linear there (a staircase,
a cliff, a kernel switch), so the unmeasured grid points halfway into both neighbouring gaps
are proposed. LitePred and nn-Meter sample adaptively the same way, around large errors.
Invariant: proposals are grid points not yet measured, lying strictly inside a flagged gap;
at most ``max_new`` per axis, the largest errors first. Pure functions; nothing here measures.
"""
from __future__ import annotations

from typing import Sequence


def _midpoint(grid: Sequence[int], lo: int, hi: int) -> int | None:
    inside = [g for g in grid if lo < g < hi]
    return inside[len(inside) // 2] if inside else None


def off_points(xs: Sequence[int], ys: Sequence[float | None], tol: float) -> list[tuple[float, int]]:
    """(relative error, index) of interior points whose leave-one-out interpolation is off by > ``tol``."""
    out = []
    for j in range(1, len(xs) - 1):
        y0, y, y1 = ys[j - 1], ys[j], ys[j + 1]
        if None in (y0, y, y1):
            continue
        w = (xs[j] - xs[j - 1]) / (xs[j + 1] - xs[j - 1])
        interp = (1 - w) * y0 + w * y1
        if interp > 0 and abs(y - interp) > tol * interp:
            out.append((abs(y - interp) / interp, j))
    return out


def propose_axis(xs: Sequence[int], lines: Sequence[Sequence[float | None]], grid: Sequence[int],
                 tol: float = 0.1, max_new: int = 8) -> list[int]:
    """New points on one axis: ``lines`` are the measured values along ``xs`` (one line per other-axis point)."""
    scored: dict[int, float] = {}
    for ys in lines:
        for err, j in off_points(xs, ys, tol):
            for lo, hi in ((xs[j - 1], xs[j]), (xs[j], xs[j + 1])):
                mid = _midpoint(grid, lo, hi)
                if mid is not None and mid not in xs:
                    scored[mid] = max(scored.get(mid, 0.0), err)
    best = sorted(scored, key=lambda x: -scored[x])[:max_new]
    return sorted(best)


def propose(ins: Sequence[int], outs: Sequence[int], ms: Sequence[Sequence[float | None]],
            grid_ins: Sequence[int], grid_outs: Sequence[int], tol: float = 0.1,
            max_new: int = 8) -> tuple[list[int], list[int]]:
    """(new in-counts, new out-counts) for a row measured at ins x outs (``ms[i][j]``)."""
    new_outs = propose_axis(outs, ms, grid_outs, tol, max_new) if len(outs) > 2 else []
    columns = [[ms[i][j] for i in range(len(ins))] for j in range(len(outs))]
    new_ins = propose_axis(ins, columns, grid_ins, tol, max_new) if len(ins) > 2 else []
    return new_ins, new_outs
