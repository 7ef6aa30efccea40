"""Target profiles: ``deploy/targets/*.toml``, one file per named target.

A profile names its runtime, the precisions it offers, the channel multiple
pruning rounds to, the thread count and runtime options. A profile with a
``[select]`` table is an alias resolved by ``platform.machine()``; ``alias = "name"`` is a plain alias.
Search order: ``$EDGEPRUNE_PROFILES`` (colon-separated folders), then the
repository's ``deploy/targets``. A path to a ``.toml`` file is accepted as a target.
Invariant: ``load_profile`` returns a dict with every key in ``REQUIRED`` set.
"""
from __future__ import annotations

import os
import platform
import tomllib
from pathlib import Path
from typing import Any

from edgeprune.cores import check_threads, usable_cores
from edgeprune.errors import UserInputError

REQUIRED = ("name", "runtime", "precisions", "default_precision", "channel_multiple", "threads")
_REPO_PROFILES = Path(__file__).resolve().parent.parent / "deploy" / "targets"


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


def _find(name: str) -> Path:
    if name.endswith(".toml") and Path(name).is_file():
        return Path(name)
    for folder in profile_dirs():
        cand = folder / f"{name}.toml"
        if cand.is_file():
            return cand
    raise UserInputError(f"unknown target {name!r}", f"choose one of: {', '.join(profile_names())} (see 'edgeprune targets')")


def load_profile(name: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    path = _find(name)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserInputError(f"target profile {path} is not valid TOML: {exc}") from exc
    if "alias" in data:
        if data["alias"] in _seen:
            raise UserInputError(f"target {name!r} is an alias loop")
        resolved = load_profile(data["alias"], _seen + (name,))
        resolved["selected_by"] = name
        return resolved
    if "select" in data:
        machine = platform.machine()
        chosen = data["select"].get(machine)
        if chosen is None or chosen in _seen:
            raise UserInputError(f"target {name!r} has no profile for this machine ({machine})", "name a target explicitly")
        resolved = load_profile(chosen, _seen + (name,))
        resolved["selected_by"] = name
        return resolved
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise UserInputError(f"target profile {path} lacks {', '.join(missing)}")
    data.setdefault("options", {})
    data.setdefault("description", "")
    data["path"] = str(path)
    return data


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
