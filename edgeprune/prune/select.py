"""Turning per-channel scores into per-group keep lists — shared by every method.

Global selection ranks all channels of all groups together on scores normalised
within each group (each group's scores divided by their mean, so layers with
larger weights do not dominate), removes the lowest ``ratio`` share of channels,
then rounds every group's kept count to that group's channel multiple.

A group's *multiple* is the target's ``round_to`` combined (lcm) with the group's
channel slices: a grouped convolution with ``groups = G`` among its members needs a
kept count divisible by G, spread evenly over its G slices (``keep_indices``).

Invariants: every kept count is a multiple of its group's multiple or the group's
full width, rounded half up (20 -> 24 for a multiple of 8); the floor
``min_keep`` is itself rounded up to the multiple, so no group keeps fewer than
``min_ratio`` of its width, nor zero channels; within a group (and within each
slice of a sliced group) the highest-scoring channels are kept.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from edgeprune.errors import UserInputError


def _multiple(multiple: int | None) -> int:
    return max(1, int(multiple or 1))


def round_up(n: float, multiple: int | None) -> int:
    """The smallest multiple of ``multiple`` that is >= ``n``."""
    m = _multiple(multiple)
    return int(math.ceil(float(n) / m - 1e-9)) * m


def round_channels(n: float, channels: int, multiple: int | None, minimum: int) -> int:
    """``n`` rounded half up to a multiple of ``multiple``, at least ``minimum`` (rounded up), at most ``channels``.

    The result is a multiple of ``multiple`` or ``channels`` itself.
    """
    m = _multiple(multiple)
    nearest = int(math.floor(float(n) / m + 0.5)) * m
    k = max(nearest, m, round_up(max(1, minimum), m))
    return channels if k >= channels else k


def min_keep(channels: int, multiple: int | None, min_ratio: float) -> int:
    """The fewest channels a group may keep: ``min_ratio`` of its width rounded up to the multiple (>= one)."""
    floor = max(1, math.ceil(channels * float(min_ratio) - 1e-9))
    return min(channels, round_up(floor, multiple))


def group_multiples(n_groups: int, round_to: int | None, multiples: Sequence[int] | None) -> list[int]:
    """Per-group multiples: ``multiples`` when given, else ``round_to`` for every group."""
    if multiples is None:
        return [_multiple(round_to)] * n_groups
    if len(multiples) != n_groups:
        raise ValueError(f"{len(multiples)} multiples for {n_groups} groups")
    return [_multiple(m) for m in multiples]


def combined_multiple(round_to: int | None, slices: int) -> int:
    """The multiple a group's kept count must have: lcm of the target's multiple and the group's slices."""
    return math.lcm(_multiple(round_to), _multiple(slices))


def _normalise(scores: np.ndarray) -> np.ndarray:
    mean = float(np.mean(scores))
    return scores / mean if mean > 0 else np.ones_like(scores)


def _check_ratio(ratio: float) -> None:
    if not 0.0 < ratio < 1.0:
        raise UserInputError(f"pruning ratio must be in (0, 1), got {ratio}", "pass a share such as 0.5")


def global_counts(scores: Sequence[np.ndarray], ratio: float, round_to: int | None = None,
                  min_ratio: float = 0.1, normalize: bool = True, *,
                  multiples: Sequence[int] | None = None) -> list[int]:
    """Kept channel count per group when the lowest ``ratio`` share of all channels goes.

    ``normalize=False`` ranks raw scores (for methods whose scores are already comparable
    across layers, e.g. BN scales after Network Slimming's sparsity training).
    ``multiples`` (one per group) overrides ``round_to``.
    """
    _check_ratio(ratio)
    mults = group_multiples(len(scores), round_to, multiples)
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
        floor = min_keep(len(s), mults[i], min_ratio)
        counts.append(round_channels(len(s) - int(lost[i]), len(s), mults[i], floor))
    return counts


def uniform_counts(widths: Sequence[int], ratio: float, round_to: int | None = None,
                   min_ratio: float = 0.1, *, multiples: Sequence[int] | None = None) -> list[int]:
    """Kept channel count per group when every group loses the same share."""
    _check_ratio(ratio)
    mults = group_multiples(len(widths), round_to, multiples)
    return [round_channels(w * (1 - ratio), w, m, min_keep(w, m, min_ratio)) for w, m in zip(widths, mults)]


def top_k(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the ``k`` highest scores, in ascending index order (ties: lower index)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return sorted(int(i) for i in order[:k])


def keep_indices(scores: np.ndarray, k: int, slices: int = 1, aligned: bool = False) -> list[int]:
    """The ``k`` channels to keep, ``k / slices`` in each of ``slices`` equal, contiguous slices.

    ``aligned``: every slice keeps the same offsets (those with the highest score summed over
    the slices) — what a grouped convolution's *input* channels need; otherwise each slice keeps
    its own top channels — enough for a grouped convolution's *output* channels.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if slices <= 1:
        return top_k(scores, k)
    if len(scores) % slices or k % slices:
        raise ValueError(f"cannot keep {k} of {len(scores)} channels evenly over {slices} slices")
    per, width = k // slices, len(scores) // slices
    sliced = scores.reshape(slices, width)
    if aligned:
        offsets = top_k(sliced.sum(axis=0), per)
        return [s * width + o for s in range(slices) for o in offsets]
    return [s * width + o for s in range(slices) for o in top_k(sliced[s], per)]
