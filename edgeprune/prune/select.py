"""Turning per-channel scores into per-group keep lists — shared by every method.

Global selection ranks all channels of all groups together on scores normalised
within each group (each group's scores divided by their mean, so layers with
larger weights do not dominate), removes the lowest ``ratio`` share of channels,
then rounds every group's kept count to the target's channel multiple.

Invariants: every group keeps at least ``min_keep(group)`` channels (never zero);
kept counts are multiples of ``round_to`` unless the group is smaller than that,
or capped at the group's width; within a group the highest-scoring channels are kept.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from edgeprune.errors import UserInputError


def round_channels(n: float, channels: int, round_to: int | None, minimum: int) -> int:
    """Round ``n`` to the nearest multiple of ``round_to``, clamped to [minimum, channels]."""
    n = max(float(minimum), float(n))
    if round_to and round_to > 1:
        n = max(round_to, round(n / round_to) * round_to)
    return int(min(channels, max(minimum, int(n))))


def min_keep(channels: int, round_to: int | None, min_ratio: float) -> int:
    """The fewest channels a group may keep: a share of its width, at least one multiple."""
    floor = max(1, math.ceil(channels * min_ratio))
    if round_to and round_to > 1:
        floor = max(floor, min(round_to, channels))
    return min(channels, floor)


def _normalise(scores: np.ndarray) -> np.ndarray:
    mean = float(np.mean(scores))
    return scores / mean if mean > 0 else np.ones_like(scores)


def global_counts(scores: Sequence[np.ndarray], ratio: float, round_to: int | None = None,
                  min_ratio: float = 0.1, normalize: bool = True) -> list[int]:
    """Kept channel count per group when the lowest ``ratio`` share of all channels goes.

    ``normalize=False`` ranks raw scores (for methods whose scores are already comparable
    across layers, e.g. BN scales after Network Slimming's sparsity training).
    """
    if not 0.0 < ratio < 1.0:
        raise UserInputError(f"pruning ratio must be in (0, 1), got {ratio}")
    normed = [_normalise(np.asarray(s, dtype=np.float64)) if normalize else np.asarray(s, dtype=np.float64)
              for s in scores]
    flat = np.concatenate(normed)
    owner = np.concatenate([np.full(len(s), i) for i, s in enumerate(normed)])
    n_remove = int(round(len(flat) * ratio))
    # exactly n_remove lowest scores go; ties broken by position, so equal scores are not all removed together
    removed = np.argsort(flat, kind="stable")[:n_remove]
    lost = np.bincount(owner[removed], minlength=len(normed))
    counts = []
    for i, s in enumerate(normed):
        floor = min_keep(len(s), round_to, min_ratio)
        counts.append(round_channels(len(s) - int(lost[i]), len(s), round_to, floor))
    return counts


def uniform_counts(widths: Sequence[int], ratio: float, round_to: int | None = None,
                   min_ratio: float = 0.1) -> list[int]:
    """Kept channel count per group when every group loses the same share."""
    if not 0.0 < ratio < 1.0:
        raise UserInputError(f"pruning ratio must be in (0, 1), got {ratio}")
    return [round_channels(w * (1 - ratio), w, round_to, min_keep(w, round_to, min_ratio)) for w in widths]


def top_k(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the ``k`` highest scores, in ascending index order (ties: lower index)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return sorted(int(i) for i in order[:k])
