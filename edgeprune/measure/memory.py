"""Resident memory of the current process, in MiB.

Invariant: both functions report mebibytes (2^20 bytes) of *this* process.
``peak_rss_mb`` is the high-water mark of resident memory since the process
started (Linux ``VmHWM``; elsewhere ``getrusage(RUSAGE_SELF).ru_maxrss``, which
is KiB on Linux and bytes on macOS). ``current_rss_mb`` is the resident set now
(``VmRSS``), or None where /proc is missing. A measurement's peak therefore
includes everything the process did before it, which is why every measurement
runs in a fresh process (see ``worker``).
"""
from __future__ import annotations

import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")


def _status_kib(field: str) -> int | None:
    """Value of a ``kB`` field (e.g. ``VmHWM``) of /proc/self/status, or None if unreadable."""
    try:
        text = _STATUS.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1])
    return None


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib / 1024.0
    import resource

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / (1024.0 * 1024.0) if sys.platform == "darwin" else maxrss / 1024.0


def current_rss_mb() -> float | None:
    """Resident set size of this process now, in MiB (None where /proc is unavailable)."""
    kib = _status_kib("VmRSS")
    return kib / 1024.0 if kib is not None else None
