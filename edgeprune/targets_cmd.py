"""``edgeprune targets``: every profile, its runtime, and whether that runtime works here."""
from __future__ import annotations

from typing import Any

from edgeprune.errors import EdgepruneError
from edgeprune.profiles import load_profile, profile_names
from edgeprune.targets import get_runtime
from edgeprune.ui import markdown_table


def list_targets() -> list[dict[str, Any]]:
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
    table = []
    for r in rows:
        name = r["name"] + (f" -> {r['resolves_to']}" if r.get("resolves_to") else "")
        versions = ", ".join(f"{k} {v}" for k, v in (r.get("versions") or {}).items())
        table.append([name, r.get("runtime", "?"), ",".join(r.get("precisions", [])), r.get("channel_multiple"),
                      "yes" if r["available"] else "no", versions or r.get("reason", "")])
    return markdown_table(["target", "runtime", "precisions", "ch. multiple", "available", "versions / why not"], table)
