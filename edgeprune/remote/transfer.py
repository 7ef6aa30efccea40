"""What travels between host and device, and the checks on what comes back.

Invariants:
- The device package is the device-side subset of the installed ``edgeprune`` —
  ``__init__``, ``errors``, ``profiles``, ``cores``, ``outputs``, ``interrupt`` and every ``.py``
  under ``targets/`` and ``measure/`` — plus ``deploy/edgeprune_device.py`` at its top. Its hash is the sha256 of
  every (name, content) pair in sorted order, so a changed file gives a new cache folder
  on the device and an unchanged package is never sent twice.
- ``extract_stream`` accepts only regular files and folders whose names stay inside the
  destination (tarfile's "data" filter plus an explicit check): a hostile or broken
  device cannot write outside the folder it is pulled into.
- ``verify_listing`` passes only if a folder holds exactly the listed files with the
  listed sizes and sha256; ``verify_artifact`` re-checks an artifact's manifest hashes.
"""
from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path
from typing import IO, Any, Iterable, Mapping

import edgeprune
from edgeprune.errors import UserInputError
from edgeprune.remote.errors import RemoteError
from edgeprune.targets.base import MANIFEST, sha256_file

ENTRY_POINT = "edgeprune_device.py"
_PACKAGE_FILES = ("__init__.py", "errors.py", "profiles.py", "cores.py", "outputs.py", "interrupt.py")
_PACKAGE_DIRS = ("targets", "measure")
# tarfile's "data" filter (Python 3.10.12+/3.11.4+) on top of our own member check.
_DATA_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


class TransferError(RemoteError):
    """What came back from a device is incomplete or does not match its listing."""


def entry_point_path() -> Path:
    """``deploy/edgeprune_device.py`` beside the installed package."""
    path = Path(edgeprune.__file__).resolve().parent.parent / "deploy" / ENTRY_POINT
    if not path.is_file():
        raise UserInputError(f"the device entry point {path} is missing",
                             "run edgeprune from its source tree or reinstall it with deploy/")
    return path


def device_package_files() -> list[tuple[str, Path]]:
    """(name inside the package tarball, local file) for everything a device needs, sorted by name."""
    root = Path(edgeprune.__file__).resolve().parent
    files = [(f"edgeprune/{name}", root / name) for name in _PACKAGE_FILES]
    for folder in _PACKAGE_DIRS:
        files += [(f"edgeprune/{folder}/{p.name}", p) for p in sorted((root / folder).glob("*.py"))]
    files.append((ENTRY_POINT, entry_point_path()))
    return sorted(files)


def package_hash(files: Iterable[tuple[str, Path]]) -> str:
    digest = hashlib.sha256()
    for name, path in sorted(files):
        data = path.read_bytes()
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()[:20]


def write_tar(dest: IO[bytes], files: Iterable[tuple[str, Path]], compress: bool = False) -> None:
    """A tar of ``files`` (name, local path) into ``dest``: fixed owner, mode and mtime, in the order given."""
    with tarfile.open(fileobj=dest, mode="w:gz" if compress else "w") as tf:
        for name, path in files:
            info = tarfile.TarInfo(name)
            info.size = path.stat().st_size
            info.mode, info.mtime = 0o644, 0
            with open(path, "rb") as fh:
                tf.addfile(info, fh)


def tar_bytes(files: Iterable[tuple[str, Path]], compress: bool = False) -> bytes:
    buf = io.BytesIO()
    write_tar(buf, files, compress)
    return buf.getvalue()


def extract_stream(stream: IO[bytes], dest: Path, expected: Mapping[str, Mapping[str, Any]] | None = None) -> int:
    """Extract an uncompressed tar stream into ``dest`` (see the invariant); returns the bytes of file data.

    With ``expected`` (name -> {bytes, ...}) a file that is not listed, or has another size, stops the
    transfer before its data is written, so a device cannot fill the host's disk with unasked-for data.
    """
    total = 0
    with tarfile.open(fileobj=stream, mode="r|") as tf:
        for member in tf:
            parts = member.name.split("/")
            if member.name.startswith("/") or ".." in parts or not (member.isfile() or member.isdir()):
                raise TransferError(f"the device sent an unsafe tar member {member.name!r}; nothing was kept")
            if expected is not None and member.isfile() and \
                    (member.name not in expected or member.size != expected[member.name]["bytes"]):
                raise TransferError(f"the device sent {member.name!r} ({member.size} bytes), which its listing "
                                    "does not hold; nothing was kept", "run again")
            tf.extract(member, dest, set_attrs=False, **_DATA_FILTER)
            total += member.size if member.isfile() else 0
    return total


def file_listing(folder: Path) -> dict[str, dict[str, Any]]:
    """relative name -> {bytes, sha256} for every regular file under ``folder``."""
    return {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(folder.rglob("*")) if p.is_file()}


def verify_listing(folder: Path, listing: Mapping[str, Mapping[str, Any]]) -> None:
    """Raise ``TransferError`` unless ``folder`` holds exactly ``listing`` (names, sizes, sha256)."""
    have = file_listing(folder)
    missing = sorted(set(listing) - set(have))
    extra = sorted(set(have) - set(listing))
    if missing or extra:
        what = f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(extra[:3])}"
        raise TransferError(f"pulled folder does not match the device's listing ({what})",
                            "the transfer was cut or the device changed the files; run again")
    for name, want in listing.items():
        if have[name]["bytes"] != want["bytes"] or have[name]["sha256"] != want["sha256"]:
            raise TransferError(f"pulled file {name} does not match the device's sha256 (transfer corrupted)",
                                "run again")


def verify_artifact(folder: Path) -> dict[str, Any]:
    """Check every file an artifact's manifest lists against its recorded size and sha256; returns the manifest."""
    from edgeprune.targets.base import Artifact

    art = Artifact.open(folder)
    for role, entry in art.manifest.get("files", {}).items():
        path = folder / entry["name"]
        if not path.is_file() or path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            raise TransferError(f"artifact file {entry['name']} ({role}) does not match {MANIFEST}",
                                "the artifact is corrupt; compile it again")
    return art.manifest
