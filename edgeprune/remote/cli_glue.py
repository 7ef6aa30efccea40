"""Command-line glue for remote devices: flags, devices from flags or profiles, and command bodies.

For ``edgeprune/cli.py`` to wire in: ``add_device_arguments`` on a subcommand's parser,
``devices_from_args`` in its body (``--device`` flags, else the profile's ``[device]``
table), ``add_device_check`` as a ``device-check`` subcommand, and ``remote_compile_checked`` /
``remote_bench_rows`` where ``deploy_check.compile_checked`` and ``measure_interleaved``
run locally today. Invariant: nothing here connects before a command body runs; rows come
back in ``compile_checked``'s shape (status ok / unsupported / compile failed / parity failed,
plus "device error") with the device's ``measurement`` attached, never as a raised runtime error.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgeprune.errors import EdgepruneError, UserInputError
from edgeprune.measure.parity import check_gates, compare_outputs
from edgeprune.measure.protocol import MeasureSettings
from edgeprune.remote.device import RemoteDevice
from edgeprune.remote.remote_target import Gate, failure_status, measure_many_remote, remote_compile_and_measure
from edgeprune.ui import markdown_table


def add_device_arguments(p: argparse.ArgumentParser) -> None:
    """--device (repeatable), --known-hosts, --accept-new-host-key, --identity, --device-python, --ssh-timeout."""
    g = p.add_argument_group("remote device (SSH)")
    g.add_argument("--device", action="append", metavar="USER@HOST[:PORT]",
                   help="compile and measure on this device over SSH (also ssh://user@host:port); repeat for "
                        "several devices, measured concurrently. Default: the target profile's [device] table, "
                        "else this machine")
    g.add_argument("--known-hosts", metavar="FILE", help="known_hosts file to check device host keys against "
                                                         "(default: ~/.ssh/known_hosts)")
    g.add_argument("--accept-new-host-key", action="store_true",
                   help="trust and record a device's host key on first contact (a changed key is still refused)")
    g.add_argument("--identity", metavar="FILE", help="private key for the device (default: ssh's own)")
    g.add_argument("--device-python", metavar="CMD", help="Python on the device. Default: the profile's, else python3")
    g.add_argument("--ssh-timeout", type=float, default=60.0, metavar="S",
                   help="timeout of each control call and transfer step over SSH. Default: %(default)s")


def devices_from_args(args: argparse.Namespace, profile: Mapping[str, Any] | None = None) -> list[RemoteDevice]:
    """The devices named by ``--device``, else the profile's ``[device]`` table, else [] (measure locally)."""
    specs: list[Any] = list(getattr(args, "device", None) or [])
    if not specs and profile is not None and isinstance(profile.get("device"), Mapping):
        specs = [profile["device"]]
    return [RemoteDevice.from_spec(spec, known_hosts=getattr(args, "known_hosts", None),
                                   accept_new=bool(getattr(args, "accept_new_host_key", False)),
                                   identity=getattr(args, "identity", None),
                                   python=getattr(args, "device_python", None),
                                   timeout=float(getattr(args, "ssh_timeout", 60.0)))
            for spec in specs]


def selfcheck_table(infos: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for info in infos:
        rts = info.get("runtimes", {})
        avail = ", ".join(f"{n} {next(iter((rts[n].get('versions') or {}).values()), '')}".strip()
                          for n in info.get("available", []))
        missing = ", ".join(n for n, e in rts.items() if not e.get("available"))
        env = info.get("environment") or {}
        rows.append([info.get("device"), info.get("python"), info.get("numpy") or "MISSING", info.get("onnx"),
                     env.get("cpu_model"), env.get("logical_cores"), avail or "none", missing or "—"])
    return markdown_table(["device", "python", "numpy", "onnx", "cpu", "cores", "runtimes", "not available"], rows)


def add_device_check(sub) -> argparse.ArgumentParser:
    """Register ``edgeprune device-check``: connect to each device and report what it can run."""
    p = sub.add_parser("device-check", help="check remote devices over SSH: Python, numpy, runtimes, CPU",
                       description="Connect to each --device (or the --target profile's [device]), install "
                                   "edgeprune's device package there if needed, and list its Python, numpy and "
                                   "which runtimes work, with versions.")
    p.add_argument("--target", help="target profile whose [device] table to use when no --device is given")
    p.add_argument("--json", metavar="FILE", help="write the reports as JSON ('-' for stdout)")
    add_device_arguments(p)
    p.set_defaults(func=cmd_device_check)
    return p


def cmd_device_check(args: argparse.Namespace) -> int:
    from edgeprune.profiles import load_profile

    profile = load_profile(args.target) if getattr(args, "target", None) else None
    devices = devices_from_args(args, profile)
    if not devices:
        raise UserInputError("no device given", "pass --device user@host[:port] or a --target with a [device] table")
    infos = []
    for dev in devices:
        with dev:
            infos.append(dev.selfcheck())
    if args.json:
        text = json.dumps(infos, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    if args.json != "-":
        print(selfcheck_table(infos))
    return 0


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
