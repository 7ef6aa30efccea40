"""Compile, gate and measure on remote devices, returning rows in ``compile_checked``'s shape.

``remote_compile_checked`` / ``remote_bench_rows`` are what ``deploy_check.compile_checked`` and
``measure_interleaved`` are locally. Invariant: rows come back in ``compile_checked``'s shape
(status ok / unsupported / compile failed / parity failed, plus "device error") with the device's
``measurement`` attached, never as a raised runtime error.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgeprune.errors import EdgepruneError, UserInputError
from edgeprune.measure.parity import check_gates, compare_outputs
from edgeprune.measure.protocol import MeasureSettings
from edgeprune.remote.device import RemoteDevice
from edgeprune.remote.remote_target import Gate, failure_status, measure_many_remote, remote_compile_and_measure


def holdout_gate(reference: np.ndarray, labels: np.ndarray | None, precision: str,
                 gates: dict | None = None) -> Gate:
    """A gate for ``remote_compile_and_measure``: the device's outputs against the PyTorch reference."""
    def gate(outputs: np.ndarray) -> dict[str, Any]:
        parity = compare_outputs(outputs, reference, labels)
        ok, why = check_gates(parity, precision, gates)
        return {"ok": ok, "reason": "" if ok else why, "parity": parity}

    return gate


def _row(result: Mapping[str, Any]) -> dict[str, Any]:
    parity = result.get("parity") or {}
    return {**result, "artifact": result.get("artifact") if result.get("out_dir") else None,
            "accuracy": parity.get("accuracy")}


def remote_compile_checked(device: RemoteDevice, onnx_path: Path, profile: Mapping[str, Any], precision: str,
                           out_dir: Path, holdout, calib: np.ndarray | None, settings: MeasureSettings,
                           rounds: int = 3, gates: dict | None = None, measure: bool = True) -> dict[str, Any]:
    """``deploy_check.compile_checked`` on a device, plus the device's measurement when the gates pass.

    ``holdout`` is a ``deploy_check.Holdout`` (x, labels, PyTorch reference outputs).
    """
    gate = holdout_gate(holdout.reference, holdout.labels, precision, gates)
    try:
        result = remote_compile_and_measure(device, onnx_path, profile, precision, calib, holdout.x, settings,
                                            rounds, out_dir, gate=gate, force=True, measure=measure)
    except EdgepruneError as exc:
        return {"device": device.label, "target": profile.get("name"), "runtime": profile.get("runtime"),
                "precision": precision, "artifact": None, "status": failure_status(exc), "reason": exc.one_line(),
                "measurement": None}
    return _row(result)


def remote_bench_rows(devices: Sequence[RemoteDevice], onnx_path: Path, profile: Mapping[str, Any],
                      precision: str, holdout, calib: np.ndarray | None, settings: MeasureSettings,
                      rounds: int, out_dir: Path, gates: dict | None = None) -> list[dict[str, Any]]:
    """One gated, measured row per device (concurrently), in ``compile_checked``'s shape."""
    gate = holdout_gate(holdout.reference, holdout.labels, precision, gates)
    rows = measure_many_remote(devices, onnx_path, profile, precision, calib, holdout.x, settings, rounds, out_dir,
                               gate=gate, force=True)
    for row in rows:
        if row.get("status") == "device error":
            print(f"edgeprune: warning: {row['reason']}", file=sys.stderr)
    return [_row(r) for r in rows]


def require_device_runtime(device: RemoteDevice, runtime: str) -> dict[str, Any]:
    """Reach ``device`` and check it can run ``runtime`` (one line when not); returns its selfcheck report."""
    info = device.selfcheck()
    if runtime not in (info.get("available") or []):
        why = ((info.get("runtimes") or {}).get(runtime) or {}).get("reason") or "not installed"
        raise UserInputError(f"device {device.label} cannot run {runtime}: {why}",
                             f"install it there, or check with 'edgeprune device-check --device {device.label}'")
    return info
