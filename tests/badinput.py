"""The bad-input catalogue's harness: run one CLI call or API call and check how it failed.

Invariant checked for every case: the expected exit code; stderr ends with exactly one
``edgeprune: error: ...`` line (no traceback, no argparse usage dump); and nothing new was
left behind — no file or folder in the case's working folder beyond what the case made
itself, and nothing in the temp directory (each case gets its own, through TMPDIR).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from tests.conftest import MINI_FMNIST

DATA = f"fashion-mnist:{MINI_FMNIST}"


@dataclass
class Case:
    """One bad input: argv for the CLI, the exit code expected and a fragment of the message."""

    id: str
    argv: Sequence[str] | Callable[[Path], Sequence[str]]
    code: int
    message: str
    setup: Callable[[Path], None] | None = None  # makes the files the case needs inside its folder

    def resolve(self, folder: Path) -> list[str]:
        return list(self.argv(folder) if callable(self.argv) else self.argv)


def snapshot(folder: Path) -> set[str]:
    """Every path under ``folder`` (relative), hidden ones included."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@contextlib.contextmanager
def chdir(folder: Path):
    old = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(old)


@contextlib.contextmanager
def private_tmp(folder: Path):
    """Point ``tempfile`` (and child processes, through TMPDIR) at ``folder`` for the duration."""
    folder.mkdir(parents=True, exist_ok=True)
    old_env, old_dir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = str(folder), str(folder)
    try:
        yield folder
    finally:
        tempfile.tempdir = old_dir
        if old_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old_env


def assert_one_error_line(err: str, message: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines, "nothing on stderr"
    assert "Traceback" not in err, err
    assert not any(ln.startswith("usage:") for ln in lines), err
    errors = [ln for ln in lines if ln.startswith("edgeprune: error: ")]
    assert len(errors) == 1, err
    assert lines[-1] == errors[0], err
    assert message.lower() in errors[0].lower(), f"{message!r} not in {errors[0]!r}"
    return errors[0]


def run_case(case: Case, folder: Path, capsys) -> str:
    """Run ``case`` through ``edgeprune.cli.main`` with ``folder`` as the cwd; return its error line."""
    from edgeprune.cli import main

    if case.setup is not None:
        case.setup(folder)
    before = snapshot(folder)
    capsys.readouterr()
    with chdir(folder), private_tmp(folder.parent / f"{folder.name}-tmp") as scratch:
        code = main(case.resolve(folder))
    err = capsys.readouterr().err
    assert code == case.code, f"exit {code}, expected {case.code}; stderr:\n{err}"
    line = assert_one_error_line(err, case.message)
    assert snapshot(folder) == before, f"left behind: {sorted(snapshot(folder) - before)}"
    assert not list(scratch.iterdir()), f"scratch left: {sorted(p.name for p in scratch.iterdir())}"
    return line


def ids(cases: Iterable[Case]) -> list[str]:
    return [c.id for c in cases]
