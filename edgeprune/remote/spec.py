"""Where a remote device is: ``user@host[:port]``, ``ssh://user@host:port``, or a profile's ``[device]`` table.

Invariant: a ``DeviceSpec`` that exists is safe on an ssh command line. ``user`` and
``host`` match strict patterns (letters, digits and ``._-``; an IPv6 address in brackets),
never start with ``-`` and contain no shell metacharacters, so neither a shell nor ssh's
option parser can read them as anything but names; ``port`` is in 1..65535; ``python``
and ``cache_dir`` (always passed to the device quoted) hold no control characters.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Mapping
from urllib.parse import urlsplit

from edgeprune.errors import UserInputError

DEFAULT_CACHE = ".cache/edgeprune-device"  # relative to the device user's home (ssh starts there)
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?")
_IPV6 = re.compile(r"[0-9A-Fa-f:.]{2,45}")
_PLAIN = re.compile(r"(?:(?P<user>[^@]*)@)?(?P<host>\[[^\]]*\]|[^:@\[\]]*)(?::(?P<port>[^:]*))?")
_TABLE_KEYS = ("host", "user", "port", "python", "identity_file", "known_hosts", "cache_dir")
_HINT = "write the device as user@host[:port] or ssh://user@host:port"


@dataclass(frozen=True)
class DeviceSpec:
    """A validated device address plus how to run Python there."""

    host: str
    user: str | None = None
    port: int = 22
    python: str = "python3"
    identity_file: str | None = None
    known_hosts: str | None = None
    cache_dir: str = DEFAULT_CACHE

    def __post_init__(self) -> None:
        _check_user(self.user)
        _check_host(self.host)
        _check_port(self.port)
        for name in ("python", "cache_dir"):
            _check_text(name, getattr(self, name))

    @property
    def destination(self) -> str:
        """``user@host`` (or ``host``) as ssh takes it; IPv6 without brackets."""
        return f"{self.user}@{self.host}" if self.user else self.host

    @property
    def label(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user + '@' if self.user else ''}{host}:{self.port}"

    def with_options(self, **changes: Any) -> "DeviceSpec":
        """A copy with the given fields replaced (None values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def parse(cls, text: str, **options: Any) -> "DeviceSpec":
        """Parse ``user@host[:port]`` / ``ssh://user@host[:port]``; ``options`` set the other fields."""
        if not isinstance(text, str) or not text.strip():
            raise UserInputError("empty device address", _HINT)
        text = text.strip()
        user, host, port = _split_url(text) if text.startswith("ssh://") else _split_plain(text)
        return cls(host=host, user=user, port=port, **{k: v for k, v in options.items() if v is not None})

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> "DeviceSpec":
        """A profile's ``[device]`` table: host (required), user, port, python, identity_file, known_hosts,
        cache_dir."""
        unknown = sorted(set(table) - set(_TABLE_KEYS))
        if unknown:
            raise UserInputError(f"unknown key(s) in the [device] table: {', '.join(unknown)}",
                                 f"use {', '.join(_TABLE_KEYS)}")
        if "host" not in table:
            raise UserInputError("the [device] table lacks host", "add host = \"192.168.1.20\" (and user, port)")
        host = str(table["host"])
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        return cls(host=host, user=table.get("user"), port=_port(table.get("port", 22)),
                   **{k: str(table[k]) for k in ("python", "identity_file", "known_hosts", "cache_dir") if k in table})


def _split_plain(text: str) -> tuple[str | None, str, int]:
    m = _PLAIN.fullmatch(text)
    if not m:
        raise UserInputError(f"device {text!r} is not a valid address", _HINT)
    host = m["host"]
    host = host[1:-1] if host.startswith("[") else host
    return m["user"], host, _port(m["port"]) if m["port"] is not None else 22


def _split_url(text: str) -> tuple[str | None, str, int]:
    try:
        url = urlsplit(text)
        port = url.port
    except ValueError as exc:
        raise UserInputError(f"device {text!r} is not a valid ssh:// address: {exc}", _HINT) from exc
    if url.password is not None or url.path not in ("", "/") or url.query or url.fragment:
        raise UserInputError(f"device {text!r} may hold only user, host and port", _HINT)
    if not url.hostname:
        raise UserInputError(f"device {text!r} names no host", _HINT)
    return url.username, url.hostname, port if port is not None else 22


def _port(value: Any) -> int:
    try:
        port = int(str(value), 10)
    except ValueError:
        raise UserInputError(f"device port {value!r} is not a number", "use a port in 1..65535") from None
    _check_port(port)
    return port


def _check_port(port: int) -> None:
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise UserInputError(f"device port {port!r} is out of range", "use a port in 1..65535")


def _check_user(user: str | None) -> None:
    if user is not None and not _USER.fullmatch(user):
        raise UserInputError(f"device user {user!r} is not a valid user name",
                             "use letters, digits, '.', '_' and '-' only")


def _check_host(host: str) -> None:
    if not isinstance(host, str) or not (_HOST.fullmatch(host) or (":" in host and _IPV6.fullmatch(host))):
        raise UserInputError(f"device host {host!r} is not a valid host name or address",
                             "use a DNS name, an IPv4 address or [IPv6]; no spaces or shell characters")


def _check_text(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise UserInputError(f"device {name} {value!r} must be a non-empty string without control characters")
