"""``edgeprune lut``: build (or reuse) a model's per-layer latency table on a target and show it."""
from __future__ import annotations

import argparse
from typing import Any

from edgeprune.commands._args import NONNEG_INT, add_json, ranged
from edgeprune.commands._device import add_device_arguments
from edgeprune.targets.base import PRECISIONS


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("lut", help="measure a model's per-layer latency table on a target",
                       description="Measure, for every distinct layer of MODEL in its real context (spatial size, "
                                   "kernel, stride), latency over its channel counts in steps of the target's channel "
                                   "multiple, on the target's runtime. Rows are cached on disk "
                                   "($EDGEPRUNE_CACHE or ~/.cache/edgeprune/lut) and reused. With --device (or a "
                                   "profile's [device] table) the table is measured on that board over SSH.")
    p.add_argument("--target", required=True, help="target profile (see 'edgeprune targets')")
    p.add_argument("--model", required=True, help="zoo model name (see 'edgeprune models')")
    p.add_argument("--input-shape", help="1,C,H,W (default: 1,3,S,S with the model's default size)")
    p.add_argument("--num-classes", type=ranged(int, 2, 100000), default=10, help="Default: %(default)s")
    p.add_argument("--precision", choices=PRECISIONS, help="default: the target's default precision")
    p.add_argument("--threads", type=NONNEG_INT, help="runtime threads (0 = all cores); default: the target's")
    p.add_argument("--in-stride", type=ranged(int, 1, 64), default=2,
                   help="measure every Nth in-channel step, interpolate between, in [1, 64]. Default: %(default)s")
    add_json(p, "the table")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_device_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    from edgeprune.commands._device import one_device
    from edgeprune.commands._output import check_outputs, emit_json
    from edgeprune.profiles import load_profile
    from edgeprune.search.model_table import model_table

    check_outputs(args)
    with one_device(args, load_profile(args.target)) as device:
        result = model_table(args.target, args.model, args.input_shape, args.precision, args.threads,
                             args.num_classes, args.in_stride, not args.no_progress, device=device)
    emit_json(result, args.json)
    if args.json != "-":
        meta = result["meta"]
        print(lut_table(result))
        print(f"\n{meta['rows_measured']} rows measured ({meta['points_measured']} points), "
              f"{meta['rows_from_cache']} reused from {meta['cache_dir']}; {meta['sampling']}")
    return 0


def lut_table(result: dict[str, Any]) -> str:
    from edgeprune.ui import markdown_table

    rows = []
    for key, row in result["rows"].items():
        values = [v for line in row["ms"] for v in line if v is not None]
        rows.append([key, f"{len(row['ins'])}x{len(row['outs'])}", row["ins"][-1], row["outs"][-1],
                     min(values), max(values)])
    return markdown_table(["signature", "grid (in x out)", "max in", "max out", "min ms", "max ms"], rows)
