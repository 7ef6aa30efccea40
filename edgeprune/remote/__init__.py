"""Remote devices over SSH (and emulated arm64 cores): compile and measure on the device that will run the model.

The host (this package) talks to a device with the plain OpenSSH client; the device runs
``deploy/edgeprune_device.py`` with the device subset of edgeprune (targets, measure) and
only numpy plus its runtime installed. An emulated arm64 core (``emulated.EmulatedDevice``,
qemu-user here) speaks the same device protocol over a local transport, for correctness only.
Invariant: importing this package imports neither torch nor any runtime; names are loaded on
first use.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "DeviceSpec": "spec",
    "RemoteDevice": "device",
    "SSHClient": "ssh",
    "RemoteError": "errors",
    "HostKeyUnknown": "errors",
    "HostKeyChanged": "errors",
    "AuthFailed": "errors",
    "Unreachable": "errors",
    "ConnectionDropped": "errors",
    "RemoteTimeout": "errors",
    "TransferError": "transfer",
    "remote_compile_and_measure": "remote_target",
    "measure_many_remote": "remote_target",
    "remote_measure_interleaved": "remote_target",
    "remote_build_table": "remote_target",
    "EmulatedDevice": "emulated",
    "emulation_available": "emulated",
    "check_on_device": "host_compiled",
    "run_on_device": "host_compiled",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
