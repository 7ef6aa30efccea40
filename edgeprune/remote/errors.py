"""Errors of talking to a remote device, and how ssh's own messages map onto them.

Invariant: every failure of an ssh call becomes exactly one ``RemoteError`` subclass whose
message is one line naming the device, what failed and what to do; ``classify`` reads
ssh's stderr (OpenSSH wording) and never guesses "success": an unrecognised ssh failure
(exit 255) is a ``ConnectionDropped`` carrying ssh's last line.
"""
from __future__ import annotations

import re

from edgeprune.errors import EdgepruneError


class RemoteError(EdgepruneError):
    """A remote device could not be used; the message says which and why."""

    exit_code = 1


class HostKeyUnknown(RemoteError):
    """The device's host key is not in known_hosts and accepting new keys was not asked for."""


class HostKeyChanged(RemoteError):
    """The device presented a different host key from the one recorded in known_hosts."""


class AuthFailed(RemoteError):
    """The device refused our key."""


class Unreachable(RemoteError):
    """Nothing answered at the device's address and port."""


class ConnectionDropped(RemoteError):
    """The connection broke while a command or transfer was running."""


class RemoteTimeout(RemoteError):
    """A remote call did not finish within its timeout (and was killed)."""


class RemoteCommandFailed(RemoteError):
    """A command on the device failed without an edgeprune error line."""


_CHANGED = re.compile(r"REMOTE HOST IDENTIFICATION HAS CHANGED|host key for .* has changed", re.I)
_UNKNOWN = re.compile(r"No \S+ host key is known for|Host key verification failed", re.I)
_AUTH = re.compile(r"Permission denied|Too many authentication failures", re.I)
_UNREACHABLE = re.compile(r"Connection refused|No route to host|Network is unreachable|Could not resolve hostname|"
                          r"Name or service not known|Connection timed out|Operation timed out|"
                          r"timed out during banner exchange", re.I)
_NOISE = re.compile(r"^(Warning: Permanently added|@@@|Exit request sent)")


def ssh_detail(stderr: str) -> str:
    """The most telling line of ssh's stderr (an error line if there is one), without noise."""
    lines = [ln.strip() for ln in (stderr or "").splitlines() if ln.strip() and not _NOISE.match(ln.strip())]
    for pattern in (_CHANGED, _UNKNOWN, _AUTH, _UNREACHABLE):
        for line in lines:
            if pattern.search(line):
                return line
    return lines[-1] if lines else "the connection closed unexpectedly"


def classify(stderr: str, label: str, known_hosts: str, what: str) -> RemoteError:
    """The error for an ssh exit status 255 with this stderr, while doing ``what`` on ``label``."""
    detail = ssh_detail(stderr)
    if _CHANGED.search(stderr):
        return HostKeyChanged(f"host key of {label} has CHANGED since it was recorded in {known_hosts}: refusing to "
                              f"connect", "possible man-in-the-middle; if the device was reinstalled, remove the old "
                              "key with ssh-keygen -R and connect again")
    if _UNKNOWN.search(stderr):
        return HostKeyUnknown(f"host key of {label} is not in {known_hosts}: refusing to connect",
                              "check the device's key fingerprint, then connect once with --accept-new-host-key "
                              "or add it to known_hosts")
    if _AUTH.search(stderr):
        return AuthFailed(f"authentication to {label} failed: {detail}",
                          "install your public key on the device (ssh-copy-id) or pass --identity FILE")
    if _UNREACHABLE.search(stderr):
        return Unreachable(f"device {label} is unreachable: {detail}",
                           "check the address and port and that sshd runs on the device")
    return ConnectionDropped(f"connection to {label} failed while {what}: {detail}",
                             "check the network and the device, then run again")
