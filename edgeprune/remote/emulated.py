"""An emulated arm64 device: the device protocol of ``RemoteDevice`` over a local qemu-user transport.

The device is this machine running Debian's arm64 Python under ``qemu-aarch64 -cpu <core>``
with the aarch64 wheels of ncnn, MNN and numpy (set up by ``arm64_setup``). Every verb of
``deploy/edgeprune_device.py`` (selfcheck, run, compile where the device has the tools) goes
through the same package install, job folders, push, pull and error lines as an SSH board:
only the transport differs (``LocalTransport`` runs the argv here instead of over ssh).

Invariants:
- Functional only: an ``EmulatedDevice`` has ``emulated = True`` and nothing may time it;
  rows made with it say ``latency: "not measured (emulated)"``.
- The emulated process gets a fixed environment: ``PATH=/nonexistent`` (so nothing it runs
  can reach a host tool such as pip), the wheels first on ``PYTHONPATH``, no user site, one
  OpenMP thread, and ``$EDGEPRUNE_CHILD_PYTHON`` naming this same qemu command line, because
  without binfmt an arm64 Python cannot exec its own binary (``mnn_tools.child_python``).
- ``core`` is a real edge core (``CORES``); ``-cpu max`` is refused: it enables SVE/SME
  paths no edge board has. cortex-a72 (ARMv8.0, no fp16 arithmetic) is the control.
- Nothing here downloads: a missing setup is ``RuntimeUnavailable`` naming the setup script.
"""
from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path
from typing import IO, Any, Callable, Mapping, Sequence

from edgeprune.errors import RuntimeUnavailable, UserInputError
from edgeprune.remote.arm64_setup import READY, default_root
from edgeprune.remote.device import RemoteDevice
from edgeprune.remote.errors import RemoteTimeout
from edgeprune.remote.spec import DeviceSpec

# qemu model -> (ARM architecture, fp16 arithmetic). a55/a76: ARMv8.2 with FEAT_FP16; a53/a72: ARMv8.0.
CORES = {"cortex-a76": ("armv8.2-a", True), "cortex-a55": ("armv8.2-a", True),
         "cortex-a72": ("armv8.0-a", False), "cortex-a53": ("armv8.0-a", False)}
NOT_MEASURED = "not measured (emulated)"
_SETUP_HINT = "run 'bash scripts/arm64-setup.sh' (make test does it), or set EDGEPRUNE_ARM64_ROOT"


def load_setup(root: str | os.PathLike | None = None) -> dict[str, Any]:
    """The setup's ``ready.json``, checked to point at files that exist; ``RuntimeUnavailable`` otherwise."""
    root = Path(root).expanduser() if root else default_root()
    try:
        info = json.loads((root / READY).read_text())
    except (OSError, ValueError):
        raise RuntimeUnavailable(f"arm64 emulation is not set up in {root}", _SETUP_HINT) from None
    for key in ("qemu", "python", "site"):
        if not Path(str(info.get(key, ""))).exists():
            raise RuntimeUnavailable(f"arm64 emulation in {root} is incomplete ({key} {info.get(key)} is missing)",
                                     _SETUP_HINT)
    return info


def emulation_available(root: str | os.PathLike | None = None) -> tuple[bool, str]:
    try:
        load_setup(root)
    except RuntimeUnavailable as exc:
        return False, exc.one_line()
    return True, ""


class LocalTransport:
    """``SSHClient``'s ``run``/``stream_out``/``close`` for argv run on this machine (no shell), with ``env``."""

    def __init__(self, label: str, env: Mapping[str, str]):
        self.label = label
        self.env = dict(env)

    def _timeout(self, what: str, timeout: float) -> RemoteTimeout:
        return RemoteTimeout(f"{what} on {self.label} did not finish within {timeout:g} s",
                             "emulation is slow: raise the timeout or use a smaller model")

    def run(self, argv: Sequence[str], *, what: str, timeout: float,
            stdin: bytes | IO[bytes] | None = None) -> subprocess.CompletedProcess:
        kwargs = {"input": stdin} if isinstance(stdin, (bytes, bytearray)) else \
            {"stdin": stdin if stdin is not None else subprocess.DEVNULL}
        try:
            return subprocess.run(list(argv), capture_output=True, timeout=timeout, check=False, env=self.env,
                                  **kwargs)
        except subprocess.TimeoutExpired:
            raise self._timeout(what, timeout) from None

    def stream_out(self, argv: Sequence[str], consume: Callable[[IO[bytes]], None], *, what: str,
                   timeout: float) -> tuple[int, str]:
        import tempfile

        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                    env=self.env)
            fired = threading.Event()
            timer = threading.Timer(timeout, lambda: (fired.set(), proc.kill()))
            timer.start()
            try:
                consume(proc.stdout)
                # Read to EOF as ssh would: tarfile stops at the end-of-archive blocks, and closing the pipe
                # before the device flushed its tar padding would fail the device with a broken pipe.
                while proc.stdout.read(1 << 16):
                    pass
            except BaseException:
                proc.kill()
                raise
            finally:
                proc.stdout.close()
                rc = proc.wait()
                timer.cancel()
                err.seek(0)
                stderr = err.read().decode("utf-8", "replace")
        if fired.is_set():
            raise self._timeout(what, timeout)
        return rc, stderr

    def close(self) -> None:
        pass


class EmulatedDevice(RemoteDevice):
    """``RemoteDevice`` whose device is qemu-aarch64 emulating ``core`` here (see the module invariants)."""

    emulated = True

    def __init__(self, core: str = "cortex-a76", *, root: str | os.PathLike | None = None, timeout: float = 900.0,
                 cache_dir: str | None = None):
        if core not in CORES:
            raise UserInputError(f"unknown emulated core {core!r}",
                                 f"choose one of: {', '.join(CORES)} (-cpu max enables SVE/SME no edge board has)")
        if timeout <= 0:
            raise UserInputError(f"device timeout must be > 0 s, got {timeout}")
        info = load_setup(root)
        self.core, self.setup_info, self.timeout = core, info, timeout
        cache = cache_dir or str(Path(info["root"]) / "device")
        self.spec = DeviceSpec(host=f"qemu-{core}", python=info["python"], cache_dir=cache)
        self._argv = [info["qemu"], "-L", info["sysroot"], "-cpu", core, info["python"]]
        env = {"HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8", "PATH": "/nonexistent",
               "PYTHONPATH": info["site"], "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1",
               "OMP_NUM_THREADS": "1", "EDGEPRUNE_CHILD_PYTHON": json.dumps(self._argv)}
        self.ssh = LocalTransport(self.label, env)
        self._lock = threading.Lock()
        self._package: str | None = None
        self._cache: str | None = None

    @classmethod
    def from_profile(cls, profile: Mapping[str, Any], **kwargs: Any) -> "EmulatedDevice":
        """The device a profile's ``[emulate]`` table names (``core``, optional ``timeout_s``)."""
        table = profile.get("emulate")
        if not isinstance(table, Mapping) or "core" not in table:
            raise UserInputError(f"target {profile.get('name')!r} has no [emulate] table with a core",
                                 "use an *-emulated target, e.g. emulated-a76-ncnn")
        kwargs.setdefault("timeout", float(table.get("timeout_s", 900.0)))
        return cls(str(table["core"]), **kwargs)

    @property
    def label(self) -> str:
        return f"qemu-aarch64 {self.core} (emulated)"

    def python(self, *args: str) -> list[str]:
        return [*self._argv, *args]


def is_emulated(profile: Mapping[str, Any]) -> bool:
    """Whether a target profile runs on an emulated device (it has an ``[emulate]`` table)."""
    return isinstance(profile.get("emulate"), Mapping)
