"""Compile on the host, check on a device: for devices without converters (emulated arm64, small boards).

``check_on_device`` compiles the ONNX model here through ``edgeprune.targets.<runtime>.compile``
(pnnx, MNN's converter), pushes the artifact and the held-out inputs to the device, runs the
device's ``run`` verb (``inspect`` and ``load`` there, on the device's CPU), pulls the outputs
back and gates them against the PyTorch reference with ``measure.parity`` — the same gate as a
local build or an SSH board.

Invariants:
- The row has ``compile_checked``'s shape (status ok / unsupported / compile failed / parity
  failed / device error, ``reason``, ``parity``, ``accuracy``, ``inspect`` from the DEVICE) plus
  ``device``, ``settings`` (the option set that produced the row's artifact) and ``attempts``
  (every option set tried, with its status and numbers). It never raises for runtime failures.
- Precision fallbacks are the target module's ``precision_attempts(precision)`` (ncnn fp16:
  winograd on, then off), tried in order until the gate passes; the row says which passed.
- ``out_dir`` appears only complete (``result.json`` written last); the device's job folder is
  removed afterwards whenever the device can be reached.
- On an emulated device nothing is timed: ``latency`` is ``"not measured (emulated)"``.
"""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edgeprune.errors import EdgepruneError, UnsupportedPrecision, UserInputError
from edgeprune.measure.parity import check_gates, compare_outputs
from edgeprune.remote.device import RemoteDevice
from edgeprune.remote.emulated import NOT_MEASURED
from edgeprune.remote.errors import RemoteError
from edgeprune.remote.remote_target import RESULT, failure_status
from edgeprune.remote.transfer import file_listing
from edgeprune.targets import require_runtime
from edgeprune.targets.base import staging_dir, write_json_atomic


def _attempts(mod: Any, precision: str) -> list[dict[str, Any]]:
    fn = getattr(mod, "precision_attempts", None)
    return list(fn(precision)) if fn is not None else [{}]


def _with_options(profile: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    return {**profile, "options": {**(profile.get("options") or {}), **options}}


def run_on_device(device: RemoteDevice, artifact_dir: Path, holdout_x: np.ndarray | None, dest: Path, *,
                  threads: int = 1, timeout_s: float | None = None) -> dict[str, Any]:
    """Push a local artifact (and inputs), run the device's ``run`` verb, pull its outputs into ``dest``.

    Returns the device's result (``inspect``, ``versions``, ``environment``) with ``outputs`` as a local
    array (or None). ``dest`` must not exist; it is left holding ``outputs.npy``.
    """
    job_id, remote = device.new_job()
    try:
        files = {f"in/artifact/{rel}": artifact_dir / rel for rel in file_listing(artifact_dir)}
        with tempfile.TemporaryDirectory(prefix="edgeprune-run-") as tmp:
            if holdout_x is not None:
                np.save(Path(tmp) / "holdout.npy", np.ascontiguousarray(holdout_x, dtype=np.float32),
                        allow_pickle=False)
                files["in/holdout.npy"] = Path(tmp) / "holdout.npy"
            device.push_files(files, remote, timeout=timeout_s)
        job = {"dir": remote, "artifact": "in/artifact", "holdout": "in/holdout.npy" if holdout_x is not None else None,
               "threads": int(threads)}
        result = device.run_job("run", job, timeout=timeout_s)
        device.pull_dir(f"{remote}/out", dest, result["files"], timeout=timeout_s)
    finally:
        with contextlib.suppress(RemoteError):
            device.remove_job(job_id)
    result["outputs"] = np.load(dest / result["outputs"], allow_pickle=False) if result.get("outputs") else None
    return result


def _one_attempt(device: RemoteDevice, mod: Any, onnx_path: Path, profile: dict[str, Any], precision: str,
                 calib: np.ndarray | None, holdout, folder: Path, gates: dict | None, threads: int,
                 timeout_s: float | None) -> dict[str, Any]:
    """Compile here into ``folder/artifact``, run on the device, gate. A row (status, reason, parity, inspect)."""
    row: dict[str, Any] = {"artifact": None}
    try:
        artifact = mod.compile(onnx_path, precision, calib, profile, folder / "artifact")
        row.update(artifact=str(artifact.path), size_mb=artifact.size_bytes() / 1e6)
        got = run_on_device(device, artifact.path, holdout.x, folder / "device", threads=threads, timeout_s=timeout_s)
    except EdgepruneError as exc:
        return {**row, "status": failure_status(exc), "reason": exc.one_line()}
    parity = compare_outputs(got["outputs"], holdout.reference, holdout.labels)
    ok, why = check_gates(parity, precision, gates)
    return {**row, "inspect": got["inspect"], "versions": got["versions"], "environment": got.get("environment"),
            "outputs_path": str(folder / "device" / "outputs.npy"), "parity": parity,
            "accuracy": parity.get("accuracy"), "status": "ok" if ok else "parity failed",
            "reason": "" if ok else why}


def _summary(options: Mapping[str, Any], row: Mapping[str, Any]) -> dict[str, Any]:
    parity = row.get("parity") or {}
    return {"settings": dict(options), "status": row["status"], "reason": row.get("reason", ""),
            **{k: parity.get(k) for k in ("max_rel_diff", "top1_agreement", "accuracy", "ref_accuracy")},
            "inspect_precision": (row.get("inspect") or {}).get("precision")}


def _precision_check(profile: Mapping[str, Any], mod: Any, precision: str) -> None:
    offered = [p for p in profile.get("precisions", mod.PRECISIONS) if p in mod.PRECISIONS]
    if precision not in offered:
        raise UnsupportedPrecision(f"{profile['name']} ({profile['runtime']}) does not offer {precision}",
                                   f"choose one of: {', '.join(offered)}")


def check_on_device(device: RemoteDevice, onnx_path: str | Path, profile: Mapping[str, Any], precision: str,
                    holdout, calib: np.ndarray | None, out_dir: str | Path, *, gates: dict | None = None,
                    threads: int = 1, timeout_s: float | None = None) -> dict[str, Any]:
    """Compile here, run on ``device``, gate; with the runtime's fallbacks. See the module invariants.

    ``holdout`` is a ``deploy_check.Holdout`` (x, labels, PyTorch reference outputs). ``out_dir`` gets
    ``attempt-<i>/artifact`` (and the device's ``outputs.npy``) per option set tried, and ``result.json``.
    """
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    base = {"device": device.label, "target": profile.get("name"), "runtime": profile.get("runtime"),
            "precision": precision, "artifact": None, "measurement": None,
            "latency": NOT_MEASURED if getattr(device, "emulated", False) else None}
    try:
        if not onnx_path.is_file():
            raise UserInputError(f"ONNX file {onnx_path} does not exist", "export the model first")
        mod = require_runtime(str(profile["runtime"]))
        _precision_check(profile, mod, precision)
    except EdgepruneError as exc:
        return {**base, "status": failure_status(exc), "reason": exc.one_line(), "attempts": []}
    attempts: list[dict[str, Any]] = []
    with staging_dir(out_dir, must_contain=RESULT) as stage:
        for i, options in enumerate(_attempts(mod, precision)):
            row = _one_attempt(device, mod, onnx_path, _with_options(profile, options), precision, calib, holdout,
                               stage / f"attempt-{i}", gates, threads, timeout_s)
            attempts.append(_summary(options, row))
            if row["status"] != "parity failed":  # passed, or failed for a reason another option cannot fix
                break
        result = {**base, **row, "settings": attempts[-1]["settings"], "attempts": attempts}
        if len(attempts) > 1 and result["status"] == "ok":
            result["reason"] = (f"passed with {_words(attempts[-1]['settings'])} after "
                                f"{_words(attempts[0]['settings'])} failed: {attempts[0]['reason']}")
        result = _localise(result, stage, out_dir)
        write_json_atomic(stage / RESULT, result)
    return result


def _words(options: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {'on' if v is True else 'off' if v is False else v}" for k, v in options.items()) \
        or "default settings"


def _localise(result: dict[str, Any], stage: Path, out_dir: Path) -> dict[str, Any]:
    """Paths in the row pointed at ``out_dir`` (the staging folder was renamed to it)."""
    for key in ("artifact", "outputs_path"):
        if result.get(key):
            result[key] = str(out_dir / Path(result[key]).relative_to(stage))
    return result
