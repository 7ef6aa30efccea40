"""The environment a measurement ran in: CPU, cores, governor, load, memory, OS, Python.

Invariant: ``environment`` only reads (files under /proc and /sys, ``platform``,
``os``); it never fails because something is unreadable: a field it cannot
determine is None. It does not import any runtime; runtime versions come from
the target module's ``versions()``.
"""
from __future__ import annotations

import os
import platform
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path

_CPUINFO = Path("/proc/cpuinfo")
_MEMINFO = Path("/proc/meminfo")
_GOVERNOR = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _cpuinfo_blocks() -> list[dict[str, str]]:
    """/proc/cpuinfo as one ``key -> value`` dict per logical CPU (empty list if unreadable)."""
    text = _read(_CPUINFO)
    if not text:
        return []
    blocks, current = [], {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
            current = {}
            continue
        key, _, value = line.partition(":")
        current[key.strip()] = value.strip()
    if current:
        blocks.append(current)
    return blocks


def cpu_model(blocks: list[dict[str, str]] | None = None) -> str | None:
    """CPU model name (x86 "model name", ARM "Model"/"Hardware"), else ``platform.processor()``."""
    blocks = _cpuinfo_blocks() if blocks is None else blocks
    for key in ("model name", "Model", "Hardware", "cpu model"):
        for block in blocks:
            if block.get(key):
                return block[key]
    return platform.processor() or None


def cpu_flags(blocks: list[dict[str, str]] | None = None) -> frozenset[str] | None:
    """The CPU's feature flags (x86 "flags", ARM "Features"), None where /proc/cpuinfo lists none."""
    blocks = _cpuinfo_blocks() if blocks is None else blocks
    for block in blocks:
        for key in ("flags", "Features"):
            if block.get(key):
                return frozenset(block[key].split())
    return None


def physical_cores(blocks: list[dict[str, str]] | None = None) -> int | None:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo, or None where they are not listed (ARM)."""
    blocks = _cpuinfo_blocks() if blocks is None else blocks
    pairs = {(b.get("physical id"), b.get("core id")) for b in blocks if "core id" in b}
    return len(pairs) or None


def cpufreq_governor() -> str | None:
    """cpu0's cpufreq scaling governor (e.g. "performance"), None where not exposed (VMs, containers)."""
    text = _read(_GOVERNOR)
    return text.strip() if text else None


def total_memory_mb() -> float | None:
    """Total physical memory in MiB (MemTotal), None if unknown."""
    text = _read(_MEMINFO) or ""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024.0
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1024.0 * 1024.0)
    except (ValueError, OSError, AttributeError):
        return None


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def environment(threads: int | None = None) -> dict:
    """A JSON-ready description of this machine and process for a measurement record."""
    blocks = _cpuinfo_blocks()
    return {
        "cpu_model": cpu_model(blocks),
        "logical_cores": os.cpu_count(),
        "physical_cores": physical_cores(blocks),
        "cpufreq_governor": cpufreq_governor(),
        "load_average": _load_average(),
        "total_memory_mb": total_memory_mb(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "system": platform.system(),
        "machine": platform.machine(),
        "hostname": socket.gethostname(),
        "threads": threads,
        "executable": sys.executable,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
