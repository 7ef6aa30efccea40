"""Summary statistics of a latency sample.

Invariant: ``summarize`` is a pure function of its input: the same latencies give
the same numbers. Percentiles are numpy's default "linear" method: the q-th
percentile interpolates linearly between the two nearest order statistics at
rank ``q/100 * (n - 1)`` (type 7 of Hyndman & Fan, also R's and Excel's default).
``std_ms`` is the population standard deviation (ddof=0). Throughput is
``batch * 1000 / mean_ms`` images per second for a runner fed one batch per call.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

PERCENTILES = (50, 90, 99)


def summarize(latencies_ms: Sequence[float], batch: int = 1) -> dict:
    """min/mean/p50/p90/p99/max/std of ``latencies_ms`` and the throughput they imply."""
    lat = np.asarray(latencies_ms, dtype=np.float64)
    if lat.ndim != 1 or lat.size == 0:
        raise ValueError(f"summarize needs a non-empty 1-D sequence of latencies, got shape {lat.shape}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    p50, p90, p99 = (float(v) for v in np.percentile(lat, PERCENTILES, method="linear"))
    mean = float(lat.mean())
    return {
        "n": int(lat.size),
        "min_ms": float(lat.min()),
        "mean_ms": mean,
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "max_ms": float(lat.max()),
        "std_ms": float(lat.std()),
        "throughput_ips": batch * 1000.0 / mean if mean > 0 else float("inf"),
    }
