"""SIGTERM and SIGHUP unwind like Ctrl-C: an exception in the main thread, so every ``with`` cleans up.

Invariant: inside ``handle_termination()`` a SIGTERM/SIGHUP raises ``Interrupted`` (a
``BaseException``, like ``KeyboardInterrupt``) in the main thread; staging folders and scratch
files are removed by their context managers on the way out; the previous handlers are restored.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


class Interrupted(BaseException):
    """The process was asked to stop by a signal."""

    def __init__(self, signum: int):
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        self.exit_code = 128 + signum
        super().__init__(self.signal_name)


def _raise(signum, _frame) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def handle_termination() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = [s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {s: signal.signal(s, _raise) for s in wanted}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
