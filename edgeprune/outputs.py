"""Where edgeprune may write: output folders it may create or replace, output files it may write.

Invariants:
- ``--force`` only ever replaces a folder edgeprune itself completed: one holding the ``MARKER`` file
  (written into every output folder ``targets.base.staging_dir`` completes) or a compiled artifact
  (``manifest.json`` of format ``edgeprune-artifact/...``), or an empty folder. Never a symlink, a
  plain file, ``/``, the home folder, the current folder or any parent of it, or a foreign folder.
- The checks here create nothing that stays: ``check_out_dir`` probes its parent with an empty
  folder it removes at once; ``check_output_file`` creates nothing at all.
- An ``OSError`` with ENOSPC/EDQUOT while writing output becomes ``OutOfSpace`` (exit 1), one line.
- Files and folders edgeprune leaves follow the process umask (``follow_umask``).
Standard library only (no torch): device-side code and ``targets/`` use it.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Iterator

from edgeprune.errors import EdgepruneError, UserInputError

MARKER = ".edgeprune-output"
MARKER_FORMAT = "edgeprune-output/1"
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
_PSEUDO_FS = frozenset({"proc", "sysfs", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs", "configfs",
                        "bpf", "pstore", "efivarfs", "fusectl", "binfmt_misc", "autofs", "mqueue", "hugetlbfs"})


class OutOfSpace(EdgepruneError):
    """The disk (or the user's quota) filled up while edgeprune wrote its output."""

    exit_code = 1


# ---- recognising edgeprune's own output ----

def mark_output(folder: Path, contents: str) -> None:
    """Write the marker that says ``folder`` is a complete edgeprune output (``contents`` is its main file)."""
    (Path(folder) / MARKER).write_text(json.dumps({"format": MARKER_FORMAT, "contents": contents}) + "\n")


def is_edgeprune_output(folder: Path) -> bool:
    """True if ``folder`` holds edgeprune's marker or is a compiled artifact."""
    folder = Path(folder)
    for name, key in ((MARKER, "format"), ("manifest.json", "format")):
        try:
            data = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and str(data.get(key, "")).startswith(("edgeprune-output/", "edgeprune-artifact/")):
            return True
    return False


def _protected(resolved: Path) -> str | None:
    """Why ``resolved`` may never be replaced, or None."""
    if resolved == Path(resolved.anchor):
        return "is the root folder"
    with contextlib.suppress(RuntimeError, KeyError, OSError):
        if resolved == Path.home().resolve():
            return "is your home folder"
    cwd = Path.cwd().resolve()
    if cwd == resolved or cwd.is_relative_to(resolved):
        return "is the current folder or one of its parents"
    return None


def check_replaceable(out: Path, flag: str = "--out") -> None:
    """Raise unless the existing ``out`` is a folder edgeprune may replace (see the module invariant)."""
    out = Path(out)
    if out.is_symlink():
        raise UserInputError(f"{flag} {out} is a symbolic link; edgeprune never replaces a link or writes through it",
                             f"pass the real folder or a new {flag}")
    why = _protected(out.resolve())
    if why:
        raise UserInputError(f"{flag} {out} {why}; --force never replaces it", f"choose a new {flag} folder")
    if not out.is_dir():
        raise UserInputError(f"{flag} {out} is an existing file, not a folder", f"choose a new {flag} folder")
    if any(out.iterdir()) and not is_edgeprune_output(out):
        raise UserInputError(f"{flag} {out} was not written by edgeprune (no {MARKER} in it); --force only replaces "
                             "edgeprune's own output", f"remove it yourself or choose a new {flag} folder")


# ---- up-front checks ----

def _fs_type(path: Path) -> str | None:
    """The filesystem type ``path`` lives on (from /proc/self/mounts), or None where unknown."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    best, kind = "", None
    target = str(path)
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1].replace("\\040", " ")
        if (target == mount or target.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
            best, kind = mount, parts[2]
    return kind


def _check_parent(parent: Path, flag: str, what: Path) -> None:
    if not parent.is_dir():
        raise UserInputError(f"the folder of {flag} {what} does not exist: {parent}", "create it first or fix the path")
    if _fs_type(parent) in _PSEUDO_FS:
        raise UserInputError(f"{flag} {what} is on a kernel pseudo-filesystem ({parent}) that holds no files",
                             f"choose another {flag}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserInputError(f"cannot write to {parent} (permission denied)", f"choose another {flag}")


def check_out_dir(path: str | os.PathLike, force: bool = False, flag: str = "--out") -> Path:
    """An output folder that does not exist yet (or, with ``force``, edgeprune's own), in a writable place."""
    out = Path(path)
    if out.is_symlink():
        check_replaceable(out, flag)
    if out.exists():
        if not out.is_dir():
            raise UserInputError(f"{flag} {out} is an existing file, not a folder", f"choose a new {flag} folder")
        if not force:
            raise UserInputError(f"output folder {out} already exists",
                                 f"choose a new {flag} or pass --force to replace it")
        check_replaceable(out, flag)
    parent = out.resolve().parent
    _check_parent(parent, flag, out)
    probe = parent / f".{out.resolve().name}.probe-{secrets.token_hex(4)}"
    try:
        probe.mkdir()
    except OSError as exc:
        raise UserInputError(f"cannot create folders in {parent} ({exc.strerror})", f"choose another {flag}") from None
    probe.rmdir()
    return out


def check_output_file(path: str | os.PathLike | None, flag: str) -> Path | None:
    """A file edgeprune may write at the end (``--json``/``--csv``); checked now, nothing is created.

    ``None`` and ``-`` (stdout) pass through as None. An existing character device or pipe
    (``/dev/stdout``) is accepted; a folder, a symlink to a folder or an unwritable place is not.
    """
    if path is None or str(path) == "-":
        return None
    out = Path(path)
    if str(path).endswith(os.sep) or out.is_dir():
        example = out / f"result.{flag.lstrip('-')}"
        raise UserInputError(f"{flag} {out} is a folder, not a file", f"pass a file name, e.g. {example}")
    if out.exists():
        mode = out.stat().st_mode
        if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
            return out
        if not stat.S_ISREG(mode):
            raise UserInputError(f"{flag} {out} exists and is not a regular file", f"choose another {flag}")
        if not os.access(out, os.W_OK):
            raise UserInputError(f"cannot overwrite {flag} {out} (permission denied)", f"choose another {flag}")
    elif out.is_symlink():
        raise UserInputError(f"{flag} {out} is a dangling symbolic link", f"choose another {flag}")
    _check_parent(out.resolve().parent, flag, out)
    return out


# ---- writing ----

def find_no_space(exc: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT ``OSError`` in ``exc`` or its cause/context chain, or None."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in NO_SPACE:
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


@contextlib.contextmanager
def writing(target: str | os.PathLike, *, inside: Path | None = None,
            hint: str = "free space or choose another --out") -> Iterator[None]:
    """Turn a full disk (ENOSPC/EDQUOT, also wrapped in another error) into one ``OutOfSpace`` line.

    The path named is the failing file, unless it lies in ``inside`` (a staging folder): then ``target``.
    """
    try:
        yield
    except OutOfSpace:
        raise
    except Exception as exc:
        full = find_no_space(exc)
        if full is None:
            raise
        name = Path(full.filename) if isinstance(full.filename, (str, os.PathLike)) else Path(target)
        if inside is not None and (name == inside or Path(name).is_relative_to(inside)):
            name = Path(target)
        raise OutOfSpace(f"no space left on device writing {name}", hint) from None


def umask() -> int:
    """The process umask, read without changing it where /proc says it."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    old = os.umask(0o022)
    os.umask(old)
    return old


def shared_mode(is_dir: bool = False, executable: bool = False) -> int:
    """The mode a new file (0666) or folder/executable (0777) gets under the umask."""
    return (0o777 if is_dir or executable else 0o666) & ~umask()


def follow_umask(root: Path) -> None:
    """Give ``root`` and everything under it the umask's modes (undoing mkdtemp's 0700 and mkstemp's 0600)."""
    mask = umask()
    root = Path(root)
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            continue
        wide = 0o777 if stat.S_ISDIR(st.st_mode) or st.st_mode & stat.S_IXUSR else 0o666
        os.chmod(path, wide & ~mask)


def sibling_name(out: Path, tag: str) -> Path:
    """A fresh hidden name beside ``out``: ``.<name>.<tag>-<random>``."""
    return out.parent / f".{out.name}.{tag}-{secrets.token_hex(4)}"


def make_sibling_dir(out: Path, tag: str) -> Path:
    """Create an empty hidden folder beside ``out`` with the umask's mode (not mkdtemp's 0700)."""
    for _ in range(100):
        cand = sibling_name(out, tag)
        try:
            cand.mkdir()
        except FileExistsError:
            continue
        return cand
    raise FileExistsError(f"no free name for a staging folder beside {out}")
