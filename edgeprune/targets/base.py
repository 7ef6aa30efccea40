"""The target protocol and the Artifact every runtime produces.

A *target module* (one per runtime, in this package) exposes module-level verbs,
written down as the ``Target`` Protocol (a module object satisfies it; ``protocol_problems``
checks the signatures too, and ``tests/test_target_conformance.py`` checks every runtime):

- ``NAME``: the runtime name; ``EXTRA``: the pip extra that installs it;
  ``PRECISIONS``: the precisions it can ever produce.
- ``available() -> (bool, reason)``: can it run here (imports, tools on PATH).
- ``versions() -> dict[str, str]``: versions of the runtime's packages/tools.
- ``compile(onnx_path, precision, calib_data, profile, out_dir) -> Artifact``:
  ``calib_data`` is a float32 NCHW numpy array (or None); ``profile`` is the
  target profile dict. Precision is one of ``PRECISIONS`` (fp32, fp16, bf16, int8);
  an unsupported one raises ``UnsupportedPrecision``; it never silently falls back.
  The ONNX file and the calibration data are checked by ``onnx_input`` (shared by
  every target) before anything is written.
- ``load(artifact, threads) -> Runner``: a runner whose ``run(x)`` takes one
  float32 numpy array (the model's single input) and returns a list of numpy
  outputs.
- ``inspect(artifact) -> dict``: ``{"precision": <what the artifact really runs
  at>, ...details}`` read from the artifact/runtime itself, not the manifest.

Invariant: an artifact folder is valid iff it holds ``manifest.json``; the
manifest is written last, atomically, after every file it lists is complete,
and ``compile`` builds in a staging folder that is renamed into place only on
success. This module imports neither torch nor any runtime.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect as _inspect
import json
import os
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator, Protocol, runtime_checkable

import numpy as np

from edgeprune.errors import UserInputError
from edgeprune.interrupt import deferred
from edgeprune.outputs import (check_replaceable, follow_umask, make_sibling_dir, mark_output, shared_mode,
                               sibling_name, writing)
from edgeprune.targets import onnx_input

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
MANIFEST = "manifest.json"


class Runner(Protocol):
    """Runs a compiled artifact: float32 NCHW numpy in, list of numpy arrays out."""

    def run(self, x: np.ndarray) -> list[np.ndarray]: ...


@runtime_checkable
class Target(Protocol):
    """The verbs a target *module* exposes (a module object satisfies this Protocol; see the module docstring).

    ``isinstance(module, Target)`` checks the names exist; ``protocol_problems`` also checks the signatures.
    """

    NAME: str
    EXTRA: str | None
    PRECISIONS: tuple[str, ...]

    def available(self) -> tuple[bool, str]: ...

    def versions(self) -> dict[str, str]: ...

    def compile(self, onnx_path: str | os.PathLike, precision: str, calib_data: np.ndarray | None,
                profile: dict[str, Any] | None, out_dir: str | os.PathLike) -> "Artifact": ...

    def load(self, artifact: "Artifact | str | os.PathLike", threads: int) -> Runner: ...

    def inspect(self, artifact: "Artifact | str | os.PathLike") -> dict[str, Any]: ...


_VERBS = ("available", "versions", "compile", "load", "inspect")


def protocol_problems(module: ModuleType) -> list[str]:
    """Why ``module`` does not satisfy ``Target`` (empty: it does).

    Each verb must be callable with the Protocol's parameters, by position and by name, in
    that order; any extra parameter a module adds must have a default.
    """
    problems = [f"missing {name}" for name in ("NAME", "EXTRA", "PRECISIONS", *_VERBS) if not hasattr(module, name)]
    if problems:
        return problems
    unknown = set(module.PRECISIONS) - set(PRECISIONS)
    if unknown:
        problems.append(f"PRECISIONS has unknown {sorted(unknown)}")
    for verb in _VERBS:
        want = list(_inspect.signature(getattr(Target, verb)).parameters)[1:]  # without self
        params = list(_inspect.signature(getattr(module, verb)).parameters.values())
        got = [p.name for p in params[:len(want)]]
        if got != want:
            problems.append(f"{verb}{tuple(got)} should take {tuple(want)}")
        problems += [f"{verb}: extra parameter {p.name!r} has no default" for p in params[len(want):]
                     if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return problems


@dataclass
class Artifact:
    """A compiled model: a folder plus its manifest."""

    path: Path
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def runtime(self) -> str:
        return self.manifest["runtime"]

    @property
    def precision(self) -> str:
        return self.manifest["precision"]

    @property
    def input_shape(self) -> list[int]:
        return list(self.manifest["input_shape"])

    def file(self, role: str) -> Path:
        """Path of the file the manifest lists under ``role`` (e.g. "model")."""
        return self.path / self.manifest["files"][role]["name"]

    def size_bytes(self) -> int:
        return sum(entry["bytes"] for entry in self.manifest["files"].values())

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Artifact":
        path = Path(path)
        mf = path / MANIFEST
        if not mf.is_file():
            raise UserInputError(
                f"{path} is not a compiled artifact (no {MANIFEST})",
                "compile one with 'edgeprune build' or 'edgeprune bench'",
            )
        try:
            manifest = json.loads(mf.read_text())
        except json.JSONDecodeError as exc:
            raise UserInputError(f"{mf} is corrupt: {exc}", "rebuild the artifact") from exc
        return cls(path, manifest)


def open_artifact(artifact: "Artifact | str | os.PathLike", runtime: str) -> Artifact:
    """The artifact at ``artifact``, checked to be ``runtime``'s and to hold every file its manifest lists."""
    art = artifact if isinstance(artifact, Artifact) else Artifact.open(artifact)
    other = str(art.manifest.get("runtime"))
    if other != runtime:
        def an(word: str) -> str:  # "an mnn", "an openvino", "a tensorrt": the names as spoken
            return f"an {word}" if word[:1] in "aeioumn" else f"a {word}"
        raise UserInputError(f"{art.path} is {an(other)} artifact, not {an(runtime)} one", "load it with its own runtime")
    for role in art.manifest.get("files", {}):
        if not art.file(role).is_file():
            raise UserInputError(f"{art.file(role)} is missing from the artifact", "rebuild the artifact")
    return art


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` via a temp file and rename, so readers never see half a file.

    The file gets the umask's mode (0644 under umask 022), not mkstemp's owner-only 0600.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=False, default=_json_default)
            fh.write("\n")
        os.chmod(tmp, shared_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_manifest(
    folder: Path,
    *,
    runtime: str,
    precision: str,
    versions: dict[str, str],
    input_shape: list[int],
    files: dict[str, str],
    options: dict[str, Any] | None = None,
    source_onnx: Path | None = None,
) -> Artifact:
    """Hash the listed files (role -> file name inside ``folder``) and write the manifest last."""
    entries = {}
    for role, name in files.items():
        fpath = folder / name
        entries[role] = {"name": name, "bytes": fpath.stat().st_size, "sha256": sha256_file(fpath)}
    manifest = {
        "format": "edgeprune-artifact/1",
        "runtime": runtime,
        "precision": precision,
        "versions": versions,
        "input_shape": [int(d) for d in input_shape],
        "files": entries,
        "options": options or {},
        "source_onnx_sha256": sha256_file(source_onnx) if source_onnx else None,
        "command": shlex.join(sys.argv),
    }
    write_json_atomic(folder / MANIFEST, manifest)
    return Artifact(folder, manifest)


@contextlib.contextmanager
def staging_dir(out_dir: str | os.PathLike, must_contain: str = MANIFEST) -> Iterator[Path]:
    """Yield an empty hidden sibling folder; on success it replaces ``out_dir``, on error it is removed.

    The caller writes every file and finally ``must_contain`` (the manifest, a report) into it.
    An existing ``out_dir`` is replaced only if it is edgeprune's own output (``outputs.check_replaceable``,
    checked before and again at the swap). A full disk becomes one ``OutOfSpace`` line naming ``out_dir``.
    On success the folder gets the umask's modes and (unless it is an artifact, recognised by its
    manifest) the ``outputs.MARKER`` file; the swap itself is never cut in half by a signal.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() or out_dir.is_symlink():
        check_replaceable(out_dir)
    with writing(out_dir):
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        stage = make_sibling_dir(out_dir, "partial")
    try:
        with writing(out_dir, inside=stage):
            yield stage
            if not (stage / must_contain).is_file():
                raise RuntimeError(f"internal error: {stage} finished without {must_contain}")
            if must_contain != MANIFEST:
                mark_output(stage, must_contain)
            follow_umask(stage)
        with deferred():
            _swap_into_place(stage, out_dir)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def _swap_into_place(stage: Path, out_dir: Path) -> None:
    """Rename ``stage`` to ``out_dir``; an existing (own) ``out_dir`` is moved aside first, removed after."""
    old = None
    if out_dir.exists() or out_dir.is_symlink():
        check_replaceable(out_dir)  # again: the folder may have changed while the work ran
        old = sibling_name(out_dir, "old")
        os.rename(out_dir, old)
    try:
        os.rename(stage, out_dir)
    except BaseException:
        if old is not None:
            os.rename(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def onnx_input_shape(onnx_path: Path) -> list[int]:
    """Static input shape of a single-input ONNX model, fully checked by ``onnx_input.read`` (no torch)."""
    return onnx_input.read(onnx_path, ranks=onnx_input.IMAGE_RANKS).input_shape
