"""A small OpenSSH client wrapper: argv lists, checked host keys, timeouts, one-line errors.

Invariants:
- ssh runs from an argv list, never through a local shell. The remote command is one
  string made by ``shlex.join`` of an argv list, so every remote argument reaches the
  device's POSIX shell as exactly one literal word (spaces, quotes, ``$``, ``;`` included).
- Host keys are always checked: ``StrictHostKeyChecking=yes`` against the user's (or the
  given) known_hosts, or ``accept-new`` when asked — never ``no``; a changed key is refused
  either way. ``BatchMode=yes``: ssh never prompts. No agent or X11 forwarding.
- Every call has a timeout; an ssh that overruns it is killed and ``RemoteTimeout`` raised.
  An ssh failure (exit 255) is raised as the ``RemoteError`` that ``errors.classify`` names;
  any other exit status is the remote command's and is returned to the caller.
- With multiplexing on, ``open`` starts one master connection per client in a private
  0700 folder; later calls reuse it. ``close`` (or garbage collection) ends it, and
  ``ControlPersist`` ends it anyway once idle, so no master outlives its use for long.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import threading
import weakref
from typing import IO, Callable, Sequence

from edgeprune.errors import UserInputError
from edgeprune.remote.errors import RemoteTimeout, classify
from edgeprune.remote.spec import DeviceSpec

CONTROL_PERSIST_S = 120
SSH_FAILED = 255


def _config_value(path: str) -> str:
    """A path as an ssh ``-o`` value: ssh splits such values on spaces unless they are double-quoted."""
    if '"' in path:
        raise UserInputError(f"ssh file path {path!r} contains a double quote", "rename the file")
    return f'"{path}"' if " " in path else path


def _end_master(ssh: str, control: str, dest: str, folder: str) -> None:
    if os.path.exists(control):
        subprocess.run([ssh, "-S", control, "-O", "exit", "--", dest], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=15, check=False)
    shutil.rmtree(folder, ignore_errors=True)


class SSHClient:
    """Runs commands on one device over OpenSSH (see the module invariants)."""

    def __init__(self, spec: DeviceSpec, *, known_hosts: str | None = None, accept_new: bool = False,
                 connect_timeout: float = 10.0, multiplex: bool = True, ssh: str = "ssh"):
        if shutil.which(ssh) is None:
            raise UserInputError(f"the ssh client ({ssh}) is not installed on this machine",
                                 "install OpenSSH's client (Debian: apt-get install openssh-client)")
        if connect_timeout <= 0:
            raise UserInputError(f"connect timeout must be > 0, got {connect_timeout}")
        self.spec = spec
        self.known_hosts = known_hosts or spec.known_hosts
        self.accept_new = accept_new
        self.connect_timeout = connect_timeout
        self.multiplex = multiplex
        self.ssh = ssh
        self._control: str | None = None
        self._finalizer: weakref.finalize | None = None
        self._lock = threading.Lock()

    @property
    def known_hosts_desc(self) -> str:
        return self.known_hosts or "your known_hosts (~/.ssh/known_hosts)"

    def options(self) -> list[str]:
        """The ssh options every call uses (host-key policy, batch mode, timeouts, port, identity)."""
        opts = ["-T", "-o", "BatchMode=yes",
                "-o", f"StrictHostKeyChecking={'accept-new' if self.accept_new else 'yes'}",
                "-o", f"ConnectTimeout={max(1, round(self.connect_timeout))}",
                "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",
                "-o", "ForwardAgent=no", "-o", "ForwardX11=no", "-o", "ClearAllForwardings=yes",
                "-p", str(self.spec.port)]
        if self.known_hosts:
            opts += ["-o", f"UserKnownHostsFile={_config_value(os.path.abspath(self.known_hosts))}"]
        if self.spec.identity_file:
            opts += ["-i", os.path.expanduser(self.spec.identity_file), "-o", "IdentitiesOnly=yes"]
        if self._control:
            opts += ["-S", self._control, "-o", "ControlMaster=no"]
        return opts

    def argv(self, remote: Sequence[str]) -> list[str]:
        """The local argv that runs the remote argv ``remote`` (each element quoted for the remote shell)."""
        return [self.ssh, *self.options(), "--", self.spec.destination, shlex.join([str(a) for a in remote])]

    def open(self) -> None:
        """Connect (the master connection when multiplexing); raises the classified error on failure."""
        with self._lock:
            if self._control or not self.multiplex:
                return
            folder = tempfile.mkdtemp(prefix="ep-ssh-")
            control = os.path.join(folder, "cm")
            cmd = [self.ssh, *self.options(), "-M", "-N", "-f", "-S", control,
                   "-o", f"ControlPersist={CONTROL_PERSIST_S}", "--", self.spec.destination]
            try:
                self._wait(cmd, "connecting", self.connect_timeout + 15)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            self._control = control
            self._finalizer = weakref.finalize(self, _end_master, self.ssh, control, self.spec.destination, folder)

    def _wait(self, cmd: list[str], what: str, timeout: float) -> None:
        # stderr goes to a file: ssh -f leaves a background master holding it, so a pipe would never reach EOF.
        with tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                      timeout=timeout, check=False)
            except subprocess.TimeoutExpired:
                raise self._timeout(what, timeout) from None
            err.seek(0)
            if proc.returncode != 0:
                raise classify(err.read().decode("utf-8", "replace"), self.spec.label, self.known_hosts_desc, what)

    def close(self) -> None:
        """End the master connection, if any."""
        with self._lock:
            if self._finalizer is not None:
                self._finalizer()
            self._control, self._finalizer = None, None

    def _timeout(self, what: str, timeout: float) -> RemoteTimeout:
        return RemoteTimeout(f"{what} on {self.spec.label} did not finish within {timeout:g} s",
                             "check the device and the network, or raise the timeout")

    def run(self, remote: Sequence[str], *, what: str, timeout: float,
            stdin: bytes | IO[bytes] | None = None) -> subprocess.CompletedProcess:
        """Run ``remote`` on the device; returns the process (bytes stdout/stderr) whatever its exit status,
        except ssh's own failures (raised, classified) and timeouts (killed, raised)."""
        self.open()
        kwargs = {"input": stdin} if isinstance(stdin, (bytes, bytearray)) else \
            {"stdin": stdin if stdin is not None else subprocess.DEVNULL}
        try:
            proc = subprocess.run(self.argv(remote), capture_output=True, timeout=timeout, check=False, **kwargs)
        except subprocess.TimeoutExpired:
            raise self._timeout(what, timeout) from None
        if proc.returncode == SSH_FAILED:
            raise classify(proc.stderr.decode("utf-8", "replace"), self.spec.label, self.known_hosts_desc, what)
        return proc

    def stream_out(self, remote: Sequence[str], consume: Callable[[IO[bytes]], None], *, what: str,
                   timeout: float) -> tuple[int, str]:
        """Run ``remote`` and hand its stdout stream to ``consume``; returns (exit status, stderr).

        A timeout kills ssh (``consume`` then sees the stream end early) and raises ``RemoteTimeout``;
        an ssh failure raises its classified error even if ``consume`` already failed on the cut stream.
        """
        self.open()
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(self.argv(remote), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
            fired = threading.Event()
            timer = threading.Timer(timeout, lambda: (fired.set(), proc.kill()))
            timer.start()
            failure: BaseException | None = None
            try:
                consume(proc.stdout)
            except BaseException as exc:  # re-raised below, after the ssh status says what really happened
                failure = exc
                proc.kill()
            finally:
                proc.stdout.close()
                rc = proc.wait()  # still under the timer: a hung ssh is killed, not waited for
                timer.cancel()
            err.seek(0)
            stderr = err.read().decode("utf-8", "replace")
        if fired.is_set():
            raise self._timeout(what, timeout) from failure
        if rc == SSH_FAILED:
            raise classify(stderr, self.spec.label, self.known_hosts_desc, what) from failure
        if failure is not None:
            raise failure
        return rc, stderr

