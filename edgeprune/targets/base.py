"""The target protocol and the Artifact every runtime produces.

A *target module* (one per runtime, in this package) exposes module-level verbs:

- ``NAME``: the runtime name; ``EXTRA``: the pip extra that installs it;
  ``PRECISIONS``: the precisions it can ever produce.
- ``available() -> (bool, reason)``: can it run here (imports, tools on PATH).
- ``versions() -> dict[str, str]``: versions of the runtime's packages/tools.
- ``compile(onnx_path, precision, calib_data, profile, out_dir) -> Artifact``:
  ``calib_data`` is a float32 NCHW numpy array (or None); ``profile`` is the
  target profile dict. An unsupported precision raises ``UnsupportedPrecision``;
  it never silently falls back.
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
import json
import os
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np

from edgeprune.errors import UserInputError
from edgeprune.interrupt import deferred
from edgeprune.outputs import (check_replaceable, follow_umask, make_sibling_dir, mark_output, shared_mode,
                               sibling_name, writing)

PRECISIONS = ("fp32", "fp16", "int8")
MANIFEST = "manifest.json"


class Runner(Protocol):
    """Runs a compiled artifact: float32 NCHW numpy in, list of numpy arrays out."""

    def run(self, x: np.ndarray) -> list[np.ndarray]: ...


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


def check_request(onnx_path: Path, precision: str, calib_data: "np.ndarray | None", *, runtime: str,
                  precisions: tuple[str, ...], min_calib: int | None = None) -> None:
    """The checks every ``compile`` makes first: known precision, existing ONNX, enough int8 calibration data."""
    if precision not in precisions:
        raise UserInputError(f"unknown precision {precision!r} for {runtime}", f"choose one of: {', '.join(precisions)}")
    if not Path(onnx_path).is_file():
        raise UserInputError(f"ONNX file {onnx_path} does not exist", "export the model first")
    if precision == "int8" and min_calib:
        got = 0 if calib_data is None else len(calib_data)
        if got < min_calib:
            raise UserInputError(f"int8 needs at least {min_calib} calibration samples, got {got}",
                                 "pass more calibration data or use --precision fp32")


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
    """Static input shape of a single-input ONNX model (without importing torch)."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends for non-ONNX bytes
        raise UserInputError(f"{onnx_path} is not a readable ONNX model ({type(exc).__name__})",
                             "pass an .onnx file exported with 'edgeprune build' or torch.onnx.export") from exc
    inits = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise UserInputError(f"{onnx_path} has {len(inputs)} inputs; edgeprune targets take single-input models")
    dims = inputs[0].type.tensor_type.shape.dim
    shape = [d.dim_value for d in dims]
    if any(v <= 0 for v in shape):
        raise UserInputError(f"{onnx_path} has a dynamic input shape {shape}", "export with a static shape")
    return shape
