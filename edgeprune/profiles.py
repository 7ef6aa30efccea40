"""Target profiles: ``deploy/targets/*.toml``, one file per named target.

A profile names its runtime, the precisions it offers, the channel multiple
pruning rounds to, the thread count and runtime options. A profile with a
``[select]`` table is an alias resolved by ``platform.machine()``; ``alias = "name"`` is a plain alias.
Search order: ``$EDGEPRUNE_PROFILES`` (colon-separated folders), then the
repository's ``deploy/targets``. A path to a ``.toml`` file is accepted as a target.
Invariant: ``load_profile`` returns a dict with every key in ``REQUIRED`` set and every
known field of the right type and range, or raises one ``UserInputError`` line naming the
file and the field; ``list_profiles`` lists every profile, a broken one with its error,
so one bad file never hides the others.
"""
from __future__ import annotations

import os
import platform
import tomllib
from pathlib import Path
from typing import Any, Callable

from edgeprune.cores import check_threads, usable_cores
from edgeprune.errors import EdgepruneError, UserInputError

REQUIRED = ("name", "runtime", "precisions", "default_precision", "channel_multiple", "threads")
KNOWN_PRECISIONS = ("fp32", "fp16", "bf16", "int8")
MAX_CHANNEL_MULTIPLE = 1024
MAX_THREADS = 4096
_REPO_PROFILES = Path(__file__).resolve().parent.parent / "deploy" / "targets"
_FIX = "fix the file, or remove it from the profile folders"


def profile_dirs() -> list[Path]:
    env = os.environ.get("EDGEPRUNE_PROFILES", "")
    dirs = [Path(p) for p in env.split(os.pathsep) if p]
    return dirs + [_REPO_PROFILES]


def profile_names() -> list[str]:
    names: list[str] = []
    for folder in profile_dirs():
        for f in sorted(folder.glob("*.toml")):
            if f.stem not in names:
                names.append(f.stem)
    return names


def list_profiles() -> list[tuple[str, dict[str, Any] | EdgepruneError]]:
    """Every profile name in search order with its loaded profile, or the error that loading it raised."""
    rows: list[tuple[str, dict[str, Any] | EdgepruneError]] = []
    for name in profile_names():
        try:
            rows.append((name, load_profile(name)))
        except EdgepruneError as exc:
            rows.append((name, exc))
    return rows


def _find(name: str) -> Path:
    if name.endswith(".toml"):
        if Path(name).is_file():
            return Path(name)
        raise UserInputError(f"target profile file not found: {name}", "check the path, or name a target")
    for folder in profile_dirs():
        cand = folder / f"{name}.toml"
        if cand.is_file():
            return cand
    raise UserInputError(f"unknown target {name!r}", f"choose one of: {', '.join(profile_names())} (see 'edgeprune targets')")


def read_toml(path: Path) -> dict[str, Any]:
    """The TOML table in ``path``; unreadable, non-UTF-8 or invalid TOML is one line naming the file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserInputError(f"cannot read target profile {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserInputError(f"target profile {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                             f"{exc.start})", "save it as UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        first = (str(exc).splitlines() or ["parse error"])[0]
        raise UserInputError(f"target profile {path} is not valid TOML: {first}", _FIX) from None


def _field_error(path: Path, key: str, want: str, value: Any) -> UserInputError:
    shown = repr(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return UserInputError(f"target profile {path}: {key} must be {want}, got {shown}", _FIX)


def _is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))


def _runtimes() -> list[str]:
    from edgeprune.targets import runtime_names

    return runtime_names()


_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "name": (lambda v: isinstance(v, str) and bool(v.strip()), "a non-empty string"),
    "description": (lambda v: isinstance(v, str), "a string"),
    "runtime": (lambda v: isinstance(v, str) and v in _runtimes(), "a runtime name"),
    "precisions": (lambda v: isinstance(v, list) and bool(v) and all(p in KNOWN_PRECISIONS for p in v)
                   and len(set(v)) == len(v), f"a list of distinct precisions from {', '.join(KNOWN_PRECISIONS)}"),
    "channel_multiple": (lambda v: _is_int(v, 1, MAX_CHANNEL_MULTIPLE),
                         f"a whole number from 1 to {MAX_CHANNEL_MULTIPLE}"),
    "threads": (lambda v: _is_int(v, 0, MAX_THREADS), f"a whole number from 0 (all cores) to {MAX_THREADS}"),
    "options": (lambda v: isinstance(v, dict) and all(
        _is_scalar(x) or (isinstance(x, list) and all(_is_scalar(y) for y in x)) for x in v.values()),
        "a table of plain values ([options] with key = value lines)"),
    "device": (lambda v: isinstance(v, dict), "a table ([device])"),
}


def check_fields(data: dict[str, Any], path: Path) -> None:
    """Every known field of a (non-alias) profile has the right type and range."""
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise UserInputError(f"target profile {path} lacks {', '.join(missing)}", _FIX)
    for key, (ok, want) in _CHECKS.items():
        if key in data and not ok(data[key]):
            if key == "runtime":
                want = f"one of {', '.join(_runtimes())}"
            raise _field_error(path, key, want, data[key])
    if data["default_precision"] not in data["precisions"]:
        raise _field_error(path, "default_precision", f"one of its precisions ({', '.join(data['precisions'])})",
                           data["default_precision"])
    for key, value in data.items():
        if key.endswith("_channel_multiple") and not _is_int(value, 1, MAX_CHANNEL_MULTIPLE):
            raise _field_error(path, key, f"a whole number from 1 to {MAX_CHANNEL_MULTIPLE}", value)


def _resolve_alias(name: str, data: dict[str, Any], path: Path, seen: tuple[str, ...]) -> dict[str, Any]:
    if "alias" in data:
        if not isinstance(data["alias"], str) or not data["alias"]:
            raise _field_error(path, "alias", "a target name", data["alias"])
        chosen = data["alias"]
        if chosen in seen:
            raise UserInputError(f"target {name!r} is an alias loop", _FIX)
    else:
        select, machine = data["select"], platform.machine()
        if not isinstance(select, dict) or not all(isinstance(v, str) for v in select.values()):
            raise _field_error(path, "select", "a table of machine = \"target\" lines", select)
        chosen = select.get(machine)
        if chosen is None or chosen in seen:
            raise UserInputError(f"target {name!r} has no profile for this machine ({machine})", "name a target explicitly")
    resolved = load_profile(chosen, seen + (name,))
    resolved["selected_by"] = name
    return resolved


def load_profile(name: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(name, str) or not name:
        raise UserInputError("no target given", "pass --target NAME (see 'edgeprune targets') or a .toml file")
    path = _find(name)
    data = read_toml(path)
    if "alias" in data or "select" in data:
        return _resolve_alias(name, data, path, _seen)
    check_fields(data, path)
    data.setdefault("options", {})
    data.setdefault("description", "")
    data["path"] = str(path)
    return data


def channel_multiple(profile: dict[str, Any], precision: str | None = None) -> int:
    """The profile's channel multiple for ``precision`` (default: the profile's chosen ``precision``), e.g.
    ``int8_channel_multiple``, else its ``channel_multiple``."""
    precision = precision or profile.get("precision") or profile["default_precision"]
    return int(profile.get(f"{precision}_channel_multiple", profile["channel_multiple"]))


def resolve_threads(profile: dict[str, Any], override: int | None = None, cores: int | None = None) -> int:
    """Thread count to use: the override, else the profile's, where 0 means all cores.

    The override must lie in ``0..cores`` (default: the cores this process may use), else a one-line
    error; the profile's value describes a typical board, so it is capped at ``cores`` (it must still
    be a count >= 0). ``cores`` is the measuring machine's count when that is not this one (a remote device).
    """
    limit = usable_cores() if cores is None else cores
    if override is not None:
        threads = check_threads(override, "--threads", limit)
    else:
        threads = min(check_threads(profile.get("threads", 0), f"threads in target profile {profile.get('name')}",
                                    1 << 20), limit)
    return threads if threads > 0 else limit
