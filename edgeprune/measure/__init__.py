"""The measurement protocol (latency, memory, size, parity). Imports without torch.

Invariant: importing this package imports nothing but the standard library, so
``python -m edgeprune.measure.worker`` can set the thread-count environment
variables before numpy or a runtime is loaded. The names below are re-exported
lazily, on first attribute access.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "summarize": "stats",
    "peak_rss_mb": "memory",
    "current_rss_mb": "memory",
    "environment": "env",
    "MeasureSettings": "settings",
    "RoundPolicy": "settings",
    "time_runs": "timing",
    "MeasurementError": "protocol",
    "measure": "protocol",
    "measure_interleaved": "protocol",
    "run_rounds": "protocol",
    "Question": "decide",
    "answer": "decide",
    "fastest_vs_runner_up": "decide",
    "DEFAULT_GATES": "parity",
    "check_gates": "parity",
    "compare_outputs": "parity",
    "run_batched": "parity",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
