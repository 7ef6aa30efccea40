"""``edgeprune device-check``: connect to each device and report what it can run."""
from __future__ import annotations

import argparse
from typing import Any, Mapping, Sequence

from edgeprune.commands._args import add_json
from edgeprune.commands._device import add_device_arguments, devices_from_args
from edgeprune.commands._output import check_outputs, emit_json
from edgeprune.errors import UserInputError
from edgeprune.ui import markdown_table


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


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("device-check", help="check remote devices over SSH: Python, numpy, runtimes, CPU",
                       description="Connect to each --device (or the --target profile's [device]), install "
                                   "edgeprune's device package there if needed, and list its Python, numpy and "
                                   "which runtimes work, with versions.")
    p.add_argument("--target", help="target profile whose [device] table to use when no --device is given")
    add_json(p, "the reports")
    add_device_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    from edgeprune.profiles import load_profile

    check_outputs(args)
    profile = load_profile(args.target) if args.target else None
    devices = devices_from_args(args, profile)
    if not devices:
        raise UserInputError("no device given", "pass --device user@host[:port] or a --target with a [device] table")
    infos = []
    for dev in devices:
        with dev:
            infos.append(dev.selfcheck())
    emit_json(infos, args.json)
    if args.json != "-":
        print(selfcheck_table(infos))
    return 0
