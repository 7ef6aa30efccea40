"""SIGINT, SIGTERM and SIGHUP unwind edgeprune cleanly; child processes never outlive an interruption.

Invariants:
- Inside ``signals_as_exceptions()`` the first SIGINT/SIGTERM/SIGHUP raises ``Interrupted`` (a
  ``KeyboardInterrupt``, so ``except Exception`` blocks do not swallow it) in the main thread; every
  ``with``/``finally`` then removes its partial output. Later signals are ignored while it unwinds.
  ``Interrupted.exit_code`` is 128 + the signal number (130 SIGINT, 143 SIGTERM, 129 SIGHUP).
- Inside ``deferred()`` (a rename that must not be cut in half) a signal is held and raised at its end.
- ``run_child`` starts each child in its own process group and kills that whole group when the
  parent stops waiting for any reason (interruption, timeout, error); on leaving
  ``signals_as_exceptions`` after an interruption, every child still tracked is killed too.
Standard library only.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from typing import Any, Iterator, Sequence

_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
_state: dict[str, Any] = {"installed": False, "fired": None, "deferring": 0, "pending": None}
_children: set[subprocess.Popen] = set()


class Interrupted(KeyboardInterrupt):
    """A signal asked edgeprune to stop; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int):
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(self.one_line())

    @property
    def signal_name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    def one_line(self) -> str:
        return f"interrupted by {self.signal_name}; partial output was removed"


def describe(exc: BaseException) -> tuple[str, int]:
    """(one line, exit code) for an interruption: ``Interrupted`` or a plain ``KeyboardInterrupt``."""
    if isinstance(exc, Interrupted):
        return exc.one_line(), exc.exit_code
    return "interrupted by SIGINT; partial output was removed", 130


def _handler(signum: int, _frame: Any) -> None:
    if _state["fired"] is not None:
        return  # already unwinding: let the cleanup finish
    if _state["deferring"]:
        _state["pending"] = _state["pending"] or signum
        return
    _state["fired"] = signum
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """Turn SIGINT/SIGTERM/SIGHUP into ``Interrupted`` in the main thread while the block runs."""
    if threading.current_thread() is not threading.main_thread() or _state["installed"]:
        yield
        return
    previous = {sig: signal.signal(sig, _handler) for sig in _SIGNALS}
    _state.update(installed=True, fired=None, deferring=0, pending=None)
    try:
        yield
    finally:
        try:
            if _state["fired"] is not None:
                kill_children()
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
            _state.update(installed=False, fired=None, deferring=0, pending=None)


handle_termination = signals_as_exceptions  # the name the CLI rewrite uses


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold signals while the block runs (e.g. swapping a folder into place); raise one at its end."""
    _state["deferring"] += 1
    try:
        yield
    finally:
        _state["deferring"] -= 1
        pending = _state["pending"]
        if not _state["deferring"] and pending is not None and _state["fired"] is None:
            _state.update(pending=None, fired=pending)
            raise Interrupted(pending)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc``'s process group (it leads its own, see ``run_child``), then reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(Exception, KeyboardInterrupt):
        proc.wait(timeout=10)


def kill_children() -> None:
    """Kill every child ``run_child`` started that is still running, with its process group."""
    for proc in list(_children):
        _kill_group(proc)
        _children.discard(proc)


def run_child(cmd: Sequence[str], *, timeout: float | None, env: dict[str, str] | None = None,
              cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True, timeout=...)`` whose child cannot be orphaned.

    The child leads a new process group (``start_new_session``), so a terminal's Ctrl-C reaches only
    edgeprune, which then kills the group: the child and anything it started. A timeout raises
    ``subprocess.TimeoutExpired`` (with the output so far) after the group is killed.
    """
    proc = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=cwd, start_new_session=True)
    _children.add(proc)
    try:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(proc.args, timeout or 0.0, output=out, stderr=err) from None
        except BaseException:
            _kill_group(proc)
            raise
    finally:
        _children.discard(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
