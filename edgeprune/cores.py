"""How many CPU cores this process may use, and thread counts bounded by them.

Invariant: a thread count accepted here lies in ``0..usable_cores()`` (0 = all cores / the
runtime's default); anything else is a ``UserInputError`` naming that range. Standard library only,
so device-side code (``measure/``) can use it without torch.
"""
from __future__ import annotations

import os

from edgeprune.errors import UserInputError


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity where the OS has one, else ``os.cpu_count()``."""
    if hasattr(os, "sched_getaffinity"):
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except OSError:  # some sandboxes refuse the call; fall back to the core count
            pass
    return os.cpu_count() or 1


def check_threads(threads: object, flag: str = "--threads", cores: int | None = None) -> int:
    """``threads`` as an int in ``0..cores`` (default: this machine's usable cores), else one-line error."""
    limit = usable_cores() if cores is None else int(cores)
    if isinstance(threads, bool) or not isinstance(threads, int):
        try:
            as_float = float(threads)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            as_float = float("nan")
        if not as_float.is_integer():
            raise UserInputError(f"{flag} must be a whole number of threads in 0..{limit}, got {threads!r}",
                                 "0 uses all cores")
        threads = int(as_float)
    if not 0 <= threads <= limit:
        raise UserInputError(f"{flag} must be in 0..{limit} on this machine ({limit} usable cores), got {threads}",
                             "0 uses all cores")
    return threads
