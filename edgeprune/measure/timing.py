"""The one timing loop: every latency edgeprune measures — a whole model or a latency-table entry — is timed here.

``time_runs(run, settings)``:
1. warm-up by time: call ``run`` until at least ``settings.warmup_s`` seconds and ``MIN_WARMUP_RUNS``
   calls have passed (the garbage collector as the caller left it);
2. ``gc.collect()`` once, then the garbage collector is OFF for the timed calls (as in ``timeit``) and
   restored afterwards, whatever happens;
3. time each call with ``perf_counter_ns`` until at least ``min_iters`` calls and ``min_seconds`` have
   passed, or ``max_seconds`` is reached (at least one timed call).
The result carries the per-call latencies (ms), their summary (``stats.summarize``: the same statistics
everywhere) and what the loop did (warm-up calls and seconds, timed seconds, whether gc was off).

Invariant: standard library only at import (``numpy`` is imported by ``summarize`` on first use), so the
whole-model worker can set the thread-count environment variables before numpy is loaded.
``clock`` is injectable (a fake in tests); it returns nanoseconds.
"""
from __future__ import annotations

import gc
import time
from typing import Any, Callable

from edgeprune.measure.settings import MIN_WARMUP_RUNS, MeasureSettings

# Names this loop's policy in cached results (latency-table rows): change it when the policy changes.
TIMING_LOOP = f"warm-up by time (>= {MIN_WARMUP_RUNS} runs), gc off, min runs and seconds, p50 linear/v1"


def warm_up(run: Callable[[], Any], warmup_s: float, clock: Callable[[], int] = time.perf_counter_ns,
            min_runs: int = MIN_WARMUP_RUNS) -> tuple[int, float]:
    """Call ``run`` until both ``warmup_s`` seconds and ``min_runs`` calls have passed: (calls, seconds)."""
    start = clock()
    runs = 0
    while runs < min_runs or (clock() - start) / 1e9 < warmup_s:
        run()
        runs += 1
    return runs, (clock() - start) / 1e9


def timed_calls(run: Callable[[], Any], min_iters: int, min_seconds: float, max_seconds: float,
                clock: Callable[[], int] = time.perf_counter_ns) -> tuple[list[float], float]:
    """Per-call latencies (ms) with the garbage collector off, and the seconds the loop took."""
    latencies: list[float] = []
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = clock()
        while True:
            t0 = clock()
            run()
            t1 = clock()
            latencies.append((t1 - t0) / 1e6)
            elapsed = (t1 - start) / 1e9
            if elapsed >= max_seconds or (len(latencies) >= min_iters and elapsed >= min_seconds):
                return latencies, elapsed
    finally:
        if gc_was_enabled:
            gc.enable()


def time_runs(run: Callable[[], Any], settings: MeasureSettings, *, batch: int = 1,
              clock: Callable[[], int] = time.perf_counter_ns) -> dict[str, Any]:
    """Warm up, then time ``run`` (see the module docstring); the latencies, their summary and the loop's record."""
    from edgeprune.measure.stats import summarize

    warmup_runs, warmup_took = warm_up(run, settings.warmup_s, clock)
    latencies, timed_s = timed_calls(run, settings.min_iters, settings.min_seconds, settings.max_seconds, clock)
    return {"latencies_ms": latencies, "latency": summarize(latencies, batch=batch),
            "loop": {"warmup_runs": warmup_runs, "warmup_s": warmup_took, "timed_runs": len(latencies),
                     "timed_s": timed_s, "gc_disabled": True, **settings.timing()}}
