"""Where results go: JSON/CSV files named on the command line, checked before any work.

Invariant: ``check_outputs`` runs first in every command body and creates nothing; a file
named by ``--json``/``--csv`` is written atomically at the end, or not at all.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edgeprune.errors import UserInputError


def check_output_file(path: str, flag: str) -> Path:
    """A file ``flag`` may write: its folder exists and is writable, and it is not a folder itself."""
    import os

    out = Path(path)
    if out.is_dir():
        raise UserInputError(f"{flag} {path} is a folder", f"pass a file name such as {Path(path) / 'report.json'}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UserInputError(f"{flag} {path}: folder {parent} does not exist", "create it first or choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserInputError(f"{flag} {path}: cannot write to folder {parent}", "choose a writable location")
    if out.exists() and not os.access(out, os.W_OK):
        raise UserInputError(f"{flag} {path} exists and is not writable", "choose another path")
    return out


def check_outputs(args: argparse.Namespace) -> None:
    """Check every output file the command line names (``--json FILE``, ``--csv FILE``) before work starts."""
    for flag in ("json", "csv"):
        value = getattr(args, flag, None)
        if value and value != "-":
            check_output_file(value, f"--{flag}")


def emit_json(data: Any, dest: str | None) -> None:
    """``data`` as JSON to stdout (``-``) or atomically to the file ``dest``."""
    if dest == "-":
        json.dump(data, sys.stdout, indent=2, default=str)
        print()
    elif dest:
        from edgeprune.targets.base import write_json_atomic

        write_json_atomic(Path(dest), data)


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` via a temp file beside ``path`` and a rename, so readers never see half a file."""
    import os
    import tempfile

    dest = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent if str(dest.parent) else ".")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
