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

from edgeprune.outputs import check_output_file, umask, writing


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

        with writing(dest, hint="free space or choose another --json"):
            write_json_atomic(Path(dest), data)


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` via a temp file beside ``path`` and a rename, so readers never see half a file."""
    dest = Path(path)
    with writing(path, hint="free space or choose another path"):
        _write(dest, text)


def _write(dest: Path, text: str) -> None:
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent if str(dest.parent) else ".")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
