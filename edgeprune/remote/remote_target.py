"""Compile, check and measure a model on remote devices, through the same target modules and protocol.

Invariants:
- Compiling and measuring happen ON THE DEVICE, through ``edgeprune.targets.<runtime>.compile``
  and ``edgeprune.measure.protocol.measure_interleaved`` (a fresh process per measurement
  there); the host times nothing but transfers. A comparison's rounds are driven from the host
  (``protocol.run_rounds``, one device job per round), which also decides its question.
- ``out_dir`` appears only complete: the artifact and the held-out outputs are pulled into a
  staging folder, checked against the device's listing (names, sizes, sha256) and the
  artifact's manifest hashes, and ``result.json`` is written last before the folder is renamed
  to ``out_dir``. A dropped connection, a timeout or a mismatch leaves no ``out_dir``.
- The job folder on the device is removed afterwards, success or not, whenever the device can
  still be reached (unless ``keep_remote``).
- ``measure_many_remote`` gives exactly one row per device, in the order given, even when a
  device fails (its row then says why); devices run concurrently, one thread each.
"""
from __future__ import annotations

import contextlib
import re
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from edgeprune.errors import (CompileError, EdgepruneError, RuntimeUnavailable, UnsupportedPrecision,
                              UserInputError)
from edgeprune.measure.protocol import Interleaved, MeasureSettings, run_rounds
from edgeprune.remote.device import RemoteDevice
from edgeprune.remote.errors import RemoteError
from edgeprune.remote.transfer import file_listing, verify_artifact
from edgeprune.targets.base import PRECISIONS, staging_dir, write_json_atomic

if TYPE_CHECKING:
    from edgeprune.measure.decide import Question

RESULT = "result.json"
# gate(outputs) -> {"ok": bool, "reason": str, "parity": {...}}: decides whether to measure.
Gate = Callable[[np.ndarray], Mapping[str, Any]]


def _job_inputs(tmp: Path, onnx_path: Path, calib: np.ndarray | None,
                holdout_x: np.ndarray | None) -> dict[str, Path]:
    files = {"model.onnx": onnx_path}
    for name, array in (("calib.npy", calib), ("holdout.npy", holdout_x)):
        if array is not None:
            np.save(tmp / name, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
            files[name] = tmp / name
    return files


def _check(onnx_path: Path, profile: Mapping[str, Any], precision: str, out_dir: Path, rounds: int,
           force: bool) -> None:
    if not onnx_path.is_file():
        raise UserInputError(f"ONNX file {onnx_path} does not exist", "export the model first")
    if precision not in PRECISIONS:
        raise UserInputError(f"unknown precision {precision!r}", f"choose from: {', '.join(PRECISIONS)}")
    offered = profile.get("precisions", PRECISIONS)
    if precision not in offered:
        raise UnsupportedPrecision(f"{profile.get('name')} ({profile.get('runtime')}) does not offer {precision}",
                                   f"choose one of: {', '.join(offered)}")
    if rounds < 1:
        raise UserInputError(f"rounds must be >= 1, got {rounds}")
    if out_dir.exists() and not force:
        raise UserInputError(f"output folder {out_dir} already exists", "choose a new folder or pass force=True")


def _device_profile(profile: Mapping[str, Any]) -> dict[str, Any]:
    """The profile as the device gets it: without its own ``[device]`` table (addresses, key paths)."""
    return {k: v for k, v in profile.items() if k != "device"}


def _compile_job(remote: str, profile: Mapping[str, Any], precision: str, files: Mapping[str, Path],
                 threads: int) -> dict[str, Any]:
    return {"dir": remote, "onnx": "in/model.onnx", "profile": _device_profile(profile), "precision": precision,
            "calib": "in/calib.npy" if "calib.npy" in files else None,
            "holdout": "in/holdout.npy" if "holdout.npy" in files else None, "threads": threads}


def _measure(device: RemoteDevice, remote: str, settings: MeasureSettings, rounds: int, seed: int) -> dict:
    job = {"dir": remote, "artifacts": {"model": "out/artifact"}, "settings": asdict(settings),
           "rounds": rounds, "seed": seed}
    measured = device.run_job("measure", job, timeout=rounds * settings.timeout_s + 120)["results"]["model"]
    measured["artifact_on_device"] = measured.get("artifact")
    measured["artifact"] = "artifact"
    return measured


def _record(device: RemoteDevice, profile: Mapping[str, Any], precision: str, compiled: dict) -> dict[str, Any]:
    keep = ("inspect", "size_mb", "versions", "compile_s", "parity_s", "files")
    return {"format": "edgeprune-remote-result/1", "device": device.label, "target": profile["name"],
            "runtime": profile["runtime"], "precision": precision, "status": "ok", "reason": "",
            "artifact": "artifact", "outputs": compiled.get("outputs"), **{k: compiled.get(k) for k in keep},
            "device_environment": compiled.get("environment"), "measurement": None}


def remote_compile_and_measure(device: RemoteDevice, onnx_path: str | Path, profile: Mapping[str, Any],
                               precision: str, calib: np.ndarray | None, holdout_x: np.ndarray | None,
                               settings: MeasureSettings | None = None, rounds: int = 3,
                               out_dir: str | Path = "remote-result", *, gate: Gate | None = None, seed: int = 0,
                               job_timeout_s: float = 1800.0, keep_remote: bool = False, force: bool = False,
                               measure: bool = True) -> dict[str, Any]:
    """Compile ``onnx_path`` for ``profile`` on ``device``, run ``holdout_x`` through it, measure it there.

    Returns the result (also written to ``out_dir/result.json``) with local paths: ``artifact``
    (the verified artifact folder) and ``outputs`` (the device's outputs on ``holdout_x``, .npy).
    If ``gate`` rejects the outputs, ``status`` is "parity failed" and nothing is measured; with
    ``measure=False`` nothing is measured either (compare artifacts later with ``remote_measure_interleaved``).
    """
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    settings = settings or MeasureSettings()
    settings.validate()
    _check(onnx_path, profile, precision, out_dir, rounds, force)
    job_id, remote = device.new_job()
    try:
        with tempfile.TemporaryDirectory(prefix="edgeprune-remote-") as tmp:
            files = _job_inputs(Path(tmp), onnx_path, calib, holdout_x)
            started = time.perf_counter()
            pushed = device.push_files({f"in/{k}": v for k, v in files.items()}, remote, timeout=job_timeout_s)
            push_s = time.perf_counter() - started
        compiled = device.run_job("compile", _compile_job(remote, profile, precision, files, settings.threads),
                                  timeout=job_timeout_s)
        with staging_dir(out_dir, must_contain=RESULT) as stage:
            started = time.perf_counter()
            pulled = device.pull_dir(f"{remote}/out", stage, compiled["files"], timeout=job_timeout_s)
            pull_s = time.perf_counter() - started
            verify_artifact(stage / "artifact")
            result = _record(device, profile, precision, compiled)
            result["transfer"] = {"pushed_bytes": pushed, "push_s": push_s, "pulled_bytes": pulled, "pull_s": pull_s}
            if gate is not None and result["outputs"]:
                verdict = gate(np.load(stage / result["outputs"], allow_pickle=False))
                result.update(parity=verdict.get("parity"), reason=verdict.get("reason", ""),
                              status="ok" if verdict["ok"] else "parity failed")
            if result["status"] == "ok" and measure:
                result["measurement"] = _measure(device, remote, settings, rounds, seed)
            write_json_atomic(stage / RESULT, result)
    finally:
        if not keep_remote:
            with contextlib.suppress(RemoteError):
                device.remove_job(job_id)
    local = {"artifact": str(out_dir / "artifact"), "out_dir": str(out_dir),
             "outputs": str(out_dir / result["outputs"]) if result["outputs"] else None}
    if result["measurement"]:
        result["measurement"]["artifact"] = local["artifact"]
    return {**result, **local}


def remote_measure_interleaved(device: RemoteDevice, artifacts: Mapping[str, str | Path],
                               settings: MeasureSettings | None = None, rounds: int = 3, *, seed: int = 0,
                               timeout_s: float = 600.0, question: "Question | None" = None,
                               max_rounds: int | None = None, confidence: float | None = None) -> Interleaved:
    """``measure_interleaved`` on the device for local artifact folders (e.g. baseline and pruned, pulled
    earlier): each is checked against its manifest, pushed once into one job folder, and measured A B A B ...
    there, one device job per round (a fresh process per measurement on the device). The rounds are driven
    from here by the same loop as local comparisons (``protocol.run_rounds``): with a ``question``, rounds
    are added until it is decided at ``confidence`` or ``max_rounds`` is reached; the statistics that decide
    run on this host, so the device needs neither scipy nor anything but numpy and its runtime."""
    settings = settings or MeasureSettings()
    settings.validate()
    if not artifacts or isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise UserInputError("remote_measure_interleaved needs at least one artifact and rounds >= 1")
    files: dict[str, Path] = {}
    for name, folder in artifacts.items():
        if not re.fullmatch(r"[A-Za-z0-9._-]+", name) or name.startswith("."):
            raise UserInputError(f"artifact name {name!r} must be letters, digits, '.', '_' or '-'")
        verify_artifact(Path(folder))
        for rel in file_listing(Path(folder)):  # the manifest's files plus any companions
            files[f"in/{name}/{rel}"] = Path(folder) / rel
    job_id, remote = device.new_job()

    def one_round(rnd: int) -> dict[str, dict[str, Any]]:
        job = {"dir": remote, "artifacts": {n: f"in/{n}" for n in artifacts}, "settings": asdict(settings),
               "rounds": 1, "seed": seed}
        return device.run_job("measure", job, timeout=len(artifacts) * settings.timeout_s + 120)["results"]

    try:
        device.push_files(files, remote, timeout=timeout_s)
        results = run_rounds(list(artifacts), one_round, rounds=rounds, question=question, max_rounds=max_rounds,
                             confidence=confidence)
    finally:
        with contextlib.suppress(RemoteError):
            device.remove_job(job_id)
    for name, res in results.items():
        res["artifact_on_device"], res["artifact"] = res.get("artifact"), str(artifacts[name])
    return results


def failure_status(exc: EdgepruneError) -> str:
    """The row status for an error, in ``deploy_check.compile_checked``'s words where they apply."""
    if isinstance(exc, (RuntimeUnavailable, UnsupportedPrecision)):
        return "unsupported"
    if isinstance(exc, (CompileError, UserInputError)):
        return "compile failed"
    if isinstance(exc, RemoteError):
        return "device error"
    return "failed"


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "device"


def device_folders(devices: Sequence[RemoteDevice]) -> list[str]:
    """One distinct folder name per device (``user@host_port``; ``-2``, ``-3`` for repeats)."""
    names: list[str] = []
    for dev in devices:
        base = _slug(dev.label)
        name, i = base, 1
        while name in names:
            i += 1
            name = f"{base}-{i}"
        names.append(name)
    return names


def measure_many_remote(devices: Sequence[RemoteDevice], onnx_path: str | Path,
                        profile: Mapping[str, Any] | Sequence[Mapping[str, Any]], precision: str,
                        calib: np.ndarray | None, holdout_x: np.ndarray | None,
                        settings: MeasureSettings | None = None, rounds: int = 3,
                        out_dir: str | Path = "remote-results", *, gate: Gate | None = None, seed: int = 0,
                        job_timeout_s: float = 1800.0, force: bool = False) -> list[dict[str, Any]]:
    """``remote_compile_and_measure`` on every device at once (a thread each), into ``out_dir/<device>``.

    ``profile`` is one profile for all devices or one per device. Returns one row per device, in order;
    a device that fails gets a row with ``status`` ("unsupported", "compile failed", "device error",
    "failed") and ``reason`` instead of raising.
    """
    if not devices:
        raise UserInputError("measure_many_remote needs at least one device")
    profiles = [profile] * len(devices) if isinstance(profile, Mapping) else list(profile)
    if len(profiles) != len(devices):
        raise UserInputError(f"{len(profiles)} profiles for {len(devices)} devices", "give one, or one per device")
    out_dir = Path(out_dir)
    folders = device_folders(devices)

    def one(i: int) -> dict[str, Any]:
        dev, prof = devices[i], profiles[i]
        try:
            return remote_compile_and_measure(dev, onnx_path, prof, precision, calib, holdout_x, settings, rounds,
                                              out_dir / folders[i], gate=gate, seed=seed,
                                              job_timeout_s=job_timeout_s, force=force)
        except EdgepruneError as exc:
            return {"device": dev.label, "target": prof.get("name"), "runtime": prof.get("runtime"),
                    "precision": precision, "status": failure_status(exc), "reason": exc.one_line(),
                    "measurement": None, "out_dir": None}

    with ThreadPoolExecutor(max_workers=len(devices), thread_name_prefix="edgeprune-device") as pool:
        return list(pool.map(one, range(len(devices))))


def remote_build_table(device: RemoteDevice, profile: Mapping[str, Any], layers: Sequence[tuple], *,
                       precision: str, threads: int, in_stride: int = 2, rounds: int = 3,
                       cache_dir: str | None = None, timeout_s: float = 3600.0,
                       out_json: str | Path | None = None) -> dict[str, Any]:
    """``lut_build.build_table`` run on the device (its row cache stays there); same return shape:
    ``{"meta", "rows": {signature key: SigTable}}``. ``out_json`` also keeps the table JSON on the host."""
    from edgeprune.measure.lut import SigTable

    job_layers = [[asdict(sig), int(cin), int(cout), sorted({int(c) for f in fixed for c in f})]
                  for sig, cin, cout, *fixed in layers]
    job = {"profile": _device_profile(profile), "layers": job_layers, "precision": precision, "threads": int(threads),
           "in_stride": in_stride, "rounds": rounds, "cache_dir": cache_dir, "timeout_s": timeout_s}
    table = device.run_job("lut", job, timeout=timeout_s * max(1, len(job_layers)) + 60)
    table["meta"]["device"] = device.label
    if out_json is not None:
        write_json_atomic(Path(out_json), table)
    return {"meta": table["meta"], "rows": {k: SigTable.from_dict(v) for k, v in table["rows"].items()}}
