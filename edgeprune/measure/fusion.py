"""Does the runtime fuse a chain of ops? nn-Meter's test, on overhead-free measured times.

nn-Meter (Zhang et al., MobiSys 2021, section 4.1) calls two neighbouring ops fused when
running them together saves more than half of the cheaper one: T1 + T2 - T12 > 0.5 * min(T1, T2).
For a chain of n ops the same test reads sum(T_i) - T_whole > 0.5 * min(T_i). The times must be
net of each micro-model's own input/output cost (``micro_units`` identity): that cost is paid
once per micro-model, so with it included every chain would look fused.
Invariant: ``fuses`` is a pure function of the numbers it is given; nothing here measures.
"""
from __future__ import annotations

from typing import Sequence

THRESHOLD = 0.5


def saving(parts: Sequence[float], whole: float) -> float:
    """Milliseconds the chain saves by running as one: sum of its parts minus the whole."""
    return float(sum(parts)) - float(whole)


def fuses(parts: Sequence[float], whole: float, threshold: float = THRESHOLD) -> bool:
    """True when the chain of ops timed alone at ``parts`` (ms) runs as one unit in ``whole`` ms."""
    if len(parts) < 2:
        raise ValueError("a fusion test needs at least two ops")
    return saving(parts, whole) > threshold * min(parts)
