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
    from edgeprune.errors import EdgepruneError
    from edgeprune.profiles import load_profile, profile_names
    from edgeprune.targets import get_runtime

    rows = []
    for name in profile_names():
        try:
            prof = load_profile(name)
        except EdgepruneError as exc:
            rows.append({"name": name, "available": False, "reason": exc.one_line()})
            continue
        row = {"name": name, "resolves_to": prof["name"] if prof["name"] != name else None,
               "runtime": prof["runtime"], "precisions": prof["precisions"],
               "channel_multiple": prof["channel_multiple"], "threads": prof["threads"],
               "description": prof["description"]}
        try:
            mod = get_runtime(prof["runtime"])
            ok, reason = mod.available()
            hint = f"; pip install 'edgeprune[{mod.EXTRA}]'" if mod.EXTRA else ""
            row.update(available=ok, reason="" if ok else f"{reason}{hint}",
                       versions=mod.versions() if ok else {})
        except EdgepruneError as exc:
            row.update(available=False, reason=exc.one_line(), versions={})
        rows.append(row)
    return rows


def targets_table(rows: list[dict[str, Any]]) -> str:
    from edgeprune.ui import markdown_table

    table = []
    for r in rows:
        name = r["name"] + (f" -> {r['resolves_to']}" if r.get("resolves_to") else "")
        versions = ", ".join(f"{k} {v}" for k, v in (r.get("versions") or {}).items())
        table.append([name, r.get("runtime", "?"), ",".join(r.get("precisions", [])), r.get("channel_multiple"),
                      "yes" if r["available"] else "no", versions or r.get("reason", "")])
    return markdown_table(["target", "runtime", "precisions", "ch. multiple", "available", "versions / why not"], table)
