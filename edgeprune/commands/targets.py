"""``edgeprune targets``: every profile, its runtime, and whether that runtime works here."""
from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("targets", help="list target profiles and whether their runtime works here",
                       description="List every target profile (deploy/targets/*.toml and $EDGEPRUNE_PROFILES), its "
                                   "runtime, precisions and channel multiple, and whether that runtime is available "
                                   "on this machine (or what to install). A broken profile is listed with its error.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def run(args: argparse.Namespace) -> int:
    import json

    rows = list_targets()
    print(json.dumps(rows, indent=2) if args.json else targets_table(rows))
    return 0


def list_targets() -> list[dict[str, Any]]:
    """One row per profile (a broken profile is a row with its error), with its runtime's availability here."""
    from edgeprune.profiles import list_profiles

    rows = []
    for name, prof in list_profiles():
        if not isinstance(prof, dict):
            rows.append({"name": name, "available": False, "reason": prof.one_line()})
            continue
        row = {"name": name, "resolves_to": prof["name"] if prof["name"] != name else None,
               "runtime": prof["runtime"], "precisions": prof["precisions"],
               "channel_multiple": prof["channel_multiple"], "threads": prof["threads"],
               "description": prof["description"]}
        row.update(_availability(prof))
        rows.append(row)
    return rows


def _availability(prof: dict[str, Any]) -> dict[str, Any]:
    """Can this profile run here: its runtime installed, and for an emulated profile the emulator set up."""
    from edgeprune.errors import EdgepruneError
    from edgeprune.remote.emulated import emulation_available, is_emulated
    from edgeprune.targets import get_runtime

    try:
        mod = get_runtime(prof["runtime"])
        ok, reason = mod.available()
        hint = f"; pip install 'edgeprune[{mod.EXTRA}]'" if mod.EXTRA else ""
        versions = mod.versions() if ok else {}
        if ok and is_emulated(prof):
            ok, why = emulation_available()
            reason, hint = (why, "") if not ok else ("", "")
        return {"available": ok, "reason": "" if ok else f"{reason}{hint}", "versions": versions}
    except EdgepruneError as exc:
        return {"available": False, "reason": exc.one_line(), "versions": {}}


def targets_table(rows: list[dict[str, Any]]) -> str:
    from edgeprune.ui import markdown_table

    table = []
    for r in rows:
        name = r["name"] + (f" -> {r['resolves_to']}" if r.get("resolves_to") else "")
        versions = ", ".join(f"{k} {v}" for k, v in (r.get("versions") or {}).items())
        table.append([name, r.get("runtime", "?"), ",".join(r.get("precisions", [])), r.get("channel_multiple"),
                      "yes" if r["available"] else "no", versions or r.get("reason", "")])
    return markdown_table(["target", "runtime", "precisions", "ch. multiple", "available", "versions / why not"], table)
