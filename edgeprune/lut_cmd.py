"""``edgeprune lut``: build (or reuse) a model's latency lookup table on a target and show it."""
from __future__ import annotations

from typing import Any

import torch

from edgeprune.errors import UserInputError
from edgeprune.measure.lut_build import build_table
from edgeprune.models import build_model, default_input_size
from edgeprune.profiles import load_profile, resolve_threads
from edgeprune.prune.graph import PruneGraph
from edgeprune.search.plan import build_plan, table_requests
from edgeprune.targets import require_runtime
from edgeprune.ui import markdown_table


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) <= 0:
        raise UserInputError(f"--input-shape {text!r} is not N,C,H,W", "e.g. --input-shape 1,3,224,224")
    return shape


def run_lut(target: str, model_name: str, input_shape: str | None, precision: str | None,
            threads: int | None, num_classes: int, in_stride: int, progress: bool) -> dict[str, Any]:
    profile = load_profile(target)
    require_runtime(profile["runtime"])
    precision = precision or profile["default_precision"]
    if precision not in profile["precisions"]:
        raise UserInputError(f"target {profile['name']} does not offer precision {precision!r}")
    if input_shape:
        shape = parse_shape(input_shape)
    else:
        size = default_input_size(model_name)
        shape = (1, 3, size, size)
    model = build_model(model_name, num_classes=num_classes, in_channels=shape[1]).eval()
    plan = build_plan(PruneGraph(model, torch.zeros(*shape)))
    table = build_table(profile, table_requests(plan), precision=precision,
                        threads=resolve_threads(profile, threads), in_stride=in_stride, progress=progress)
    layers = [{"layer": layer.name, "signature": layer.sig.key(), "in": layer.in_c, "out": layer.out_c,
               "ms_full_width": table["rows"][layer.sig.key()].lookup(layer.in_c, layer.out_c)} for layer in plan]
    rows = {k: r.to_dict() for k, r in table["rows"].items()}
    return {"meta": {**table["meta"], "model": model_name, "input_shape": list(shape)}, "layers": layers, "rows": rows}


def lut_table(result: dict[str, Any]) -> str:
    rows = []
    for key, row in result["rows"].items():
        values = [v for line in row["ms"] for v in line if v is not None]
        rows.append([key, f"{len(row['ins'])}x{len(row['outs'])}", row["ins"][-1], row["outs"][-1],
                     min(values), max(values)])
    return markdown_table(["signature", "grid (in x out)", "max in", "max out", "min ms", "max ms"], rows)
