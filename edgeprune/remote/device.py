"""A remote device reached over SSH: install the device package, push files, run jobs, pull results.

Invariants:
- The device package (``transfer.device_package_files``) is installed once per content
  hash under CACHE/<hash>/ on the device and reused by every later job and host; job files
  live in CACHE/jobs/<random id>/ and are removed by ``remove_job``.
- ``run_job`` sends the job JSON on stdin and reads the result JSON from stdout. A failure on
  the device arrives as one ``edgeprune-device: error: <Class>: <message>`` line and is
  raised here as that edgeprune error class, its message prefixed with the device.
- ``pull_dir`` leaves nothing at its destination unless the whole folder arrived and matched
  the device's listing: it extracts into a hidden sibling, verifies, then renames.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading
import uuid
from pathlib import Path
from typing import IO, Any, Mapping

from edgeprune import errors as ep_errors
from edgeprune.errors import EdgepruneError, UserInputError
from edgeprune.remote import snippets
from edgeprune.remote.errors import RemoteCommandFailed
from edgeprune.remote.spec import DeviceSpec
from edgeprune.remote.ssh import SSHClient
from edgeprune.remote.transfer import (ENTRY_POINT, TransferError, device_package_files, extract_stream,
                                       package_hash, tar_bytes, verify_listing, write_tar)

_DEVICE_ERROR = re.compile(r"^edgeprune-device: error: (?:([A-Za-z]+): )?(.*)$", re.M)
_ERROR_NAMES = ("UserInputError", "RuntimeUnavailable", "UnsupportedPrecision", "CompileError", "GateFailed")


def _error_class(name: str | None) -> type[EdgepruneError]:
    if name in _ERROR_NAMES:
        return getattr(ep_errors, name)
    if name == "MeasurementError":
        from edgeprune.measure.protocol import MeasurementError

        return MeasurementError
    if name == "LutError":
        from edgeprune.measure.lut_build import LutError

        return LutError
    return RemoteCommandFailed


class RemoteDevice:
    """One device over SSH (see the module invariants). Use as a context manager, or call ``close``."""

    def __init__(self, spec: DeviceSpec, *, accept_new: bool = False, timeout: float = 60.0,
                 connect_timeout: float = 10.0, multiplex: bool = True):
        if timeout <= 0:
            raise UserInputError(f"device timeout must be > 0 s, got {timeout}")
        self.spec = spec
        self.timeout = timeout
        self.ssh = SSHClient(spec, known_hosts=spec.known_hosts, accept_new=accept_new,
                             connect_timeout=connect_timeout, multiplex=multiplex)
        self._lock = threading.Lock()
        self._package: str | None = None
        self._cache: str | None = None

    @classmethod
    def from_spec(cls, spec: str | DeviceSpec | Mapping[str, Any], *, known_hosts: str | None = None,
                  accept_new: bool = False, identity: str | None = None, timeout: float = 60.0,
                  python: str | None = None, cache_dir: str | None = None, connect_timeout: float = 10.0,
                  multiplex: bool = True) -> "RemoteDevice":
        """A device from ``user@host[:port]`` / ``ssh://...``, a ``DeviceSpec``, a ``[device]`` table or a
        profile holding one; keyword arguments override the spec's fields. Nothing connects yet."""
        if isinstance(spec, DeviceSpec):
            base = spec
        elif isinstance(spec, Mapping):
            base = DeviceSpec.from_table(spec["device"] if isinstance(spec.get("device"), Mapping) else spec)
        else:
            base = DeviceSpec.parse(spec)
        base = base.with_options(known_hosts=known_hosts, identity_file=identity, python=python, cache_dir=cache_dir)
        if base.identity_file and not Path(os.path.expanduser(base.identity_file)).is_file():
            raise UserInputError(f"identity file {base.identity_file} does not exist", "pass the private key's path")
        return cls(base, accept_new=accept_new, timeout=timeout, connect_timeout=connect_timeout, multiplex=multiplex)

    @property
    def label(self) -> str:
        return self.spec.label

    def __enter__(self) -> "RemoteDevice":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.ssh.close()

    def python(self, *args: str) -> list[str]:
        return [self.spec.python, *args]

    def run(self, argv: list[str], *, what: str, timeout: float | None = None,
            stdin: bytes | IO[bytes] | None = None) -> subprocess.CompletedProcess:
        """Run ``argv`` on the device; raises the device's error unless it exits 0."""
        proc = self.ssh.run(argv, what=what, timeout=timeout or self.timeout, stdin=stdin)
        if proc.returncode != 0:
            raise self._device_error(proc.stderr.decode("utf-8", "replace"), proc.returncode, what)
        return proc

    def _device_error(self, stderr: str, rc: int, what: str) -> EdgepruneError:
        found = _DEVICE_ERROR.findall(stderr)
        if found:
            name, message = found[-1]
            return _error_class(name)(f"{self.label}: {message.strip()}")
        if rc in (126, 127):
            return ep_errors.RuntimeUnavailable(
                f"{self.label}: the device has no usable Python at {self.spec.python!r}",
                "install Python 3.10+ with numpy there, or set python in the device's [device] table")
        lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
        return RemoteCommandFailed(f"{what} failed on {self.label} (exit {rc}): "
                                   f"{lines[-1] if lines else 'no error message'}")

    def cache_dir(self) -> str:
        """The device's absolute cache folder (probing the device on first use)."""
        self.ensure_package()
        return self._cache

    def ensure_package(self) -> str:
        """Install the device package (once per content hash) and return its folder on the device."""
        with self._lock:
            if self._package is None:
                files = device_package_files()
                digest = package_hash(files)
                out = self.run(self.python("-c", snippets.PROBE, self.spec.cache_dir, digest),
                               what="probing the device").stdout
                try:
                    probe = json.loads(out)
                except ValueError:
                    raise RemoteCommandFailed(f"{self.label}: probing the device printed {out[:80]!r}, not JSON",
                                              "check that the device's shell start-up files print nothing") from None
                dest = f"{probe['cache']}/{digest}"
                if not probe["installed"]:
                    self.run(self.python("-c", snippets.UNPACK, dest), what="installing the device package",
                             stdin=tar_bytes(files, compress=True))
                self._cache, self._package = probe["cache"], dest
            return self._package

    def new_job(self) -> tuple[str, str]:
        """(job id, job folder on the device) for a fresh job; the folder is created by the first push."""
        job_id = uuid.uuid4().hex[:16]
        return job_id, f"{self.cache_dir()}/jobs/{job_id}"

    def remove_job(self, job_id: str) -> None:
        self.run(self.python("-c", snippets.REMOVE_JOB, self.cache_dir(), job_id), what="removing the job folder")

    def push_files(self, files: Mapping[str, Path], remote_dir: str, *, timeout: float | None = None) -> int:
        """Send ``files`` (name inside ``remote_dir`` -> local path) as one tar; returns the bytes sent.
        ``remote_dir`` appears on the device only once every file arrived."""
        with tempfile.TemporaryFile() as tar:
            write_tar(tar, sorted((name, Path(path)) for name, path in files.items()))
            size = tar.tell()
            tar.seek(0)
            self.run(self.python("-c", snippets.UNPACK, remote_dir), what=f"pushing files to {remote_dir}",
                     timeout=timeout, stdin=tar)
        return size

    def pull_dir(self, remote_dir: str, local_dir: str | os.PathLike,
                 listing: Mapping[str, Mapping[str, Any]] | None = None, *, timeout: float | None = None) -> int:
        """Fetch ``remote_dir`` into ``local_dir`` (absent or an empty folder); returns the bytes of file data.

        With ``listing`` (name -> {bytes, sha256}) the pulled folder must match it exactly.
        """
        local_dir = Path(local_dir)
        if local_dir.exists() and (not local_dir.is_dir() or any(local_dir.iterdir())):
            raise UserInputError(f"{local_dir} exists and is not an empty folder", "pull into a new folder")
        local_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{local_dir.name}.pulling-", dir=local_dir.parent))
        got: list[int] = []
        what = f"pulling {remote_dir}"
        try:
            rc, stderr = self.ssh.stream_out(self.python("-c", snippets.PACK, remote_dir),
                                             lambda stream: got.append(_extract(stream, tmp, listing, self.label)),
                                             what=what, timeout=timeout or self.timeout)
            if rc != 0:
                raise self._device_error(stderr, rc, what)
            if listing is not None:
                verify_listing(tmp, listing)
            os.replace(tmp, local_dir)
            return got[0]
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def run_job(self, verb: str, job: Mapping[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
        """Run ``edgeprune_device.py VERB`` on ``job``; returns its result JSON."""
        pkg = self.ensure_package()
        what = f"the {verb} job"
        proc = self.run(self.python(f"{pkg}/{ENTRY_POINT}", verb, "--job", "-", "--out", "-"), what=what,
                        timeout=timeout, stdin=json.dumps(dict(job)).encode())
        try:
            return json.loads(proc.stdout)
        except ValueError:
            raise RemoteCommandFailed(f"{what} on {self.label} returned no valid result JSON",
                                      "run the device's selfcheck to see what it prints") from None

    def selfcheck(self, *, timeout: float | None = None) -> dict[str, Any]:
        """The device's Python, numpy, onnx, runtimes (available, reason, versions) and CPU, as a dict."""
        info = self.run_job("selfcheck", {}, timeout=timeout)
        info["device"] = self.label
        return info


def _extract(stream: IO[bytes], dest: Path, listing: Mapping[str, Mapping[str, Any]] | None, label: str) -> int:
    try:
        return extract_stream(stream, dest, listing)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise TransferError(f"the transfer from {label} was cut short ({exc}); nothing was kept",
                            "check the connection and run again") from exc

