"""Build (or reuse from cache) the latency lookup table for a set of layer signatures.

``build_table(profile, layers, ...)`` takes the distinct signatures of a model with the
widest (in, out) each must cover, measures each signature's grid in its own fresh worker
process (``lut_worker``, timed by the same loop as whole models: ``timing.time_runs``), and
caches every row on disk keyed by target, runtime versions, host, thread count, precision,
timing settings, signature, grid and what a figure means (``ENTRY``: net of the micro-model's
identity, adaptively refined; ``lut_rows``), so a second model with the same layer shapes —
ResNet-56 after ResNet-20 — measures nothing. Fused units (``LayerSig`` kind "unit") are rows
like any other: their signature names their chain.
Invariant: the returned table has a row for every requested signature covering its grid.
"""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any, Iterable

from edgeprune.errors import UserInputError
from edgeprune.measure.lut import (SINK_RUNTIMES, LayerSig, RowCache, SigTable, cache_key, channel_grid,
                                   sampled_inputs, thin)
from edgeprune.measure.lut_rows import LutError, measure_row  # noqa: F401  (LutError: re-exported)
from edgeprune.measure.settings import MeasureSettings
from edgeprune.measure.timing import TIMING_LOOP

# What a row's figures mean; part of every cache key, so rows measured under another rule are not reused. Rows of
# lut_rows.RAW_ROW_RUNTIMES (MNN) are raw, not net: what MNN rows have always been.
ENTRY = ("net of an identity micro-model's time (max-pool/concat/slice); adaptive refinement where interpolation "
         "is off by >10%")

# Added to ``ENTRY`` for ``lut.SINK_RUNTIMES``: their rows were measured with the sink (new cache keys for them only)
SINK_ENTRY = ("; convolutions with kernels over 1x1, and fused units holding one, end in a global average pool "
              "(micro-model and identity alike)")

MAX_OUT_POINTS = 16  # per layer: every channel multiple up to this many, strided beyond
MAX_IN_POINTS = 6
MAX_UNIT_POINTS = (3, 5)  # (in, out) for fused units: several convolutions per point, the dearest to measure


def _bar(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional on a device
        return None
    return tqdm(total=total, desc="latency table", unit="layer", file=sys.stderr)


def default_cache_dir() -> Path:
    base = os.environ.get("EDGEPRUNE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "edgeprune")
    return Path(base) / "lut"


def table_context(profile: dict[str, Any], precision: str, threads: int,
                  settings: MeasureSettings | None = None) -> dict[str, Any]:
    """What makes a measured row reusable, the timing loop's settings included (default: ``TABLE_TIMING``)."""
    from edgeprune.measure.env import cpu_model
    from edgeprune.targets import get_runtime

    settings = settings or MeasureSettings.for_table(threads)
    return {"target": profile["name"], "runtime": profile["runtime"], "precision": precision, "threads": threads,
            "versions": get_runtime(profile["runtime"]).versions(), "cpu": cpu_model(), "host": platform.node(),
            "options": profile.get("options", {}), "timing": {"loop": TIMING_LOOP, **settings.timing()},
            "entry": ENTRY + (SINK_ENTRY if profile["runtime"] in SINK_RUNTIMES else "")}


def plan_points(sig: LayerSig, max_in: int, max_out: int, multiple: int, in_stride: int,
                fixed_ins: Iterable[int] = ()) -> tuple[list[int], list[int]]:
    """In- and out-channel counts to measure; ``fixed_ins`` are widths of layers whose input is not pruned."""
    if sig.kind == "depthwise":
        grid = thin(channel_grid(max_in, multiple), MAX_OUT_POINTS)
        return grid, [grid[-1]]
    unit = sig.kind == "unit"  # a fused unit is several layers: coarser first, adaptive sampling adds
    ins = thin(sampled_inputs(channel_grid(max_in, multiple), in_stride), MAX_UNIT_POINTS[0] if unit else MAX_IN_POINTS)
    outs = thin(channel_grid(max_out, multiple), MAX_UNIT_POINTS[1] if unit else MAX_OUT_POINTS)
    return sorted(set(ins) | set(fixed_ins)), outs


def _measure_row(profile, precision, settings: MeasureSettings, sig, ins, outs, rounds, timeout_s) -> SigTable:
    """The net, adaptively refined row (``lut_rows.measure_row``: fresh ``lut_worker`` processes);
    ``profile["channel_multiple"]`` is the table's channel step (``build_table`` passes a copy carrying it)."""
    return measure_row(profile, precision, settings, sig, ins, outs, rounds, timeout_s,
                       int(profile["channel_multiple"]))


def build_table(profile: dict[str, Any], layers: Iterable[tuple], *, precision: str,
                threads: int, in_stride: int = 2, rounds: int = 3, cache_dir: Path | None = None,
                progress: bool = True, timeout_s: float = 900.0, multiple: int | None = None,
                settings: MeasureSettings | None = None) -> dict[str, Any]:
    """``layers``: (signature, widest in, widest out[, fixed in-widths to include]).

    ``multiple``: the channel step of the measured grid — the multiple the search will choose
    counts at (``--round-to``); None uses the profile's ``channel_multiple``.
    ``settings``: the timing loop's settings for each entry (default ``MeasureSettings.for_table(threads)``).
    Returns {"meta", "rows": {signature key: SigTable}}.
    """
    settings = settings or MeasureSettings.for_table(threads)
    if settings.threads != threads:
        raise UserInputError(f"table settings are for {settings.threads} thread(s), the table for {threads}")
    widest: dict[LayerSig, list] = {}
    for sig, cin, cout, *fixed in layers:
        w = widest.setdefault(sig, [0, 0, set()])
        w[0], w[1] = max(w[0], cin), max(w[1], cout)
        w[2].update(*fixed)
    context = table_context(profile, precision, threads, settings)
    cache = cache_dir or default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    store = RowCache(cache)
    multiple = int(multiple if multiple is not None else profile["channel_multiple"])
    rows, hits, points = {}, 0, 0
    bar = _bar(len(widest), progress)
    for sig, (cin, cout, fixed) in widest.items():
        ins, outs = plan_points(sig, cin, cout, multiple, in_stride, fixed)
        key = cache_key(context, sig, ins, outs)
        if bar is not None:
            bar.set_postfix_str(sig.key())
        cached = store.get(key, sig, ins, outs)  # a damaged file is a miss (warned once), then overwritten
        if cached is not None:
            rows[sig.key()] = cached
            hits += 1
        else:
            row = _measure_row({**profile, "channel_multiple": multiple}, precision, settings, sig, ins, outs,
                               rounds, timeout_s)
            store.put(key, row)
            rows[sig.key()] = row
            points += len(row.ins) * len(row.outs)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    meta = {**context, "channel_multiple": multiple, "in_stride": in_stride, "rounds": rounds,
            "statistic": "min over interleaved rounds of the per-round p50",
            "timing": context["timing"],
            "sampling": f"out-channels at every multiple of {multiple} (at most {MAX_OUT_POINTS} per layer, "
                        f"evenly strided beyond); in-channels every {in_stride} multiples (at most {MAX_IN_POINTS}); "
                        f"fused units at most {MAX_UNIT_POINTS[0]} x {MAX_UNIT_POINTS[1]}; linear interpolation "
                        "between measured points; more points where a point is off its neighbours' interpolation "
                        "by >10%; every figure net of an identity model's time", "cache_dir": str(cache),
            "rows_from_cache": hits, "rows_measured": len(widest) - hits, "points_measured": points}
    return {"meta": meta, "rows": rows}
