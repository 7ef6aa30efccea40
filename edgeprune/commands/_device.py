"""The remote-device flags every command that compiles or measures shares, and devices from them.

Invariant: nothing here connects; ``devices_from_args`` only builds ``RemoteDevice`` objects
(``--device`` flags, else the target profile's ``[device]`` table, else none: this machine).
"""
from __future__ import annotations

import argparse
import contextlib
from typing import Any, Iterator, Mapping

from edgeprune.commands._args import POSITIVE_FLOAT
from edgeprune.remote.device import RemoteDevice


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
    g.add_argument("--ssh-timeout", type=POSITIVE_FLOAT, default=60.0, metavar="S",
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


@contextlib.contextmanager
def one_device(args: argparse.Namespace, profile: Mapping[str, Any]) -> Iterator[RemoteDevice | None]:
    """The command's one remote device (from --device or the profile's [device] table), or None; closed after."""
    from edgeprune.errors import UserInputError

    devices = devices_from_args(args, profile)
    if len(devices) > 1:
        raise UserInputError("this command takes one --device",
                             "compare several devices with 'edgeprune bench --device A --device B'")
    device = devices[0] if devices else None
    try:
        yield device
    finally:
        if device is not None:
            device.close()
