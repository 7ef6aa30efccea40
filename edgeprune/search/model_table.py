"""A zoo model's latency lookup table on a target: every distinct layer, measured in its real context.

Invariant: the table's rows come from ``measure.lut_build.build_table`` (measured on the target's
runtime, cached and reused); the per-layer view looks each plan entry — a layer, or a fused
unit where the runtime fuses (``search.units``) — up at its full width.
"""
from __future__ import annotations

from typing import Any

import torch

from edgeprune.errors import UserInputError
from edgeprune.measure.lut_build import build_table
from edgeprune.models import build_model, default_input_size
from edgeprune.profiles import load_profile, resolve_threads
from edgeprune.prune.graph import PruneGraph
from edgeprune.search.plan import build_plan
from edgeprune.search.units import plan_with_units
from edgeprune.targets import require_runtime


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) <= 0 or shape[0] != 1 or max(shape[2:]) > 4096 or shape[1] > 64:
        raise UserInputError(f"--input-shape {text!r} is not 1,C,H,W (C <= 64, H and W <= 4096)",
                             "e.g. --input-shape 1,3,224,224")
    return shape


def model_table(target: str, model_name: str, input_shape: str | None, precision: str | None,
                threads: int | None, num_classes: int, in_stride: int, progress: bool,
                device: Any = None) -> dict[str, Any]:
    """Build (or reuse) the table of ``model_name`` on ``target``: {"meta", "layers", "rows"}.

    With ``device`` (a connected ``RemoteDevice``) every entry is measured on that board, whose
    own cache keeps the rows: a board's table is never measured anywhere else.
    """
    profile = load_profile(target)
    precision = precision or profile["default_precision"]
    if precision not in profile["precisions"]:
        raise UserInputError(f"target {profile['name']} does not offer precision {precision!r}",
                             f"choose one of: {', '.join(profile['precisions'])}")
    shape = parse_shape(input_shape) if input_shape else (1, 3, default_input_size(model_name),
                                                          default_input_size(model_name))
    if device is None:
        threads = resolve_threads(profile, threads)
        require_runtime(profile["runtime"])
    else:
        threads = resolve_threads(profile, threads, cores=_device_cores(device, profile["runtime"]))
    model = build_model(model_name, num_classes=num_classes, in_channels=shape[1]).eval()
    graph = PruneGraph(model, torch.zeros(*shape))
    plan, table = plan_with_units(model, build_plan(graph), [g.channels for g in graph.groups],
                                  table_builder(profile, precision, threads, in_stride, progress, device))
    layers = [{"layer": layer.name, "signature": layer.sig.key(), "in": layer.in_c, "out": layer.out_c,
               "ms_full_width": table["rows"][layer.sig.key()].lookup(layer.in_c, layer.out_c)} for layer in plan]
    rows = {k: r.to_dict() for k, r in table["rows"].items()}
    return {"meta": {**table["meta"], "model": model_name, "input_shape": list(shape)}, "layers": layers, "rows": rows}


def table_builder(profile: dict[str, Any], precision: str, threads: int, in_stride: int = 2, progress: bool = False,
                  device: Any = None, multiple: int | None = None):
    """``requests -> table`` for ``search.units.plan_with_units``: measured here (``build_table``), or on
    ``device`` (``remote_build_table``: the board measures, and its own cache keeps the rows)."""
    if device is None:
        return lambda requests: build_table(profile, requests, precision=precision, threads=threads,
                                            in_stride=in_stride, progress=progress, multiple=multiple)
    from edgeprune.remote.remote_target import remote_build_table

    prof = profile if multiple is None else {**profile, "channel_multiple": int(multiple)}
    return lambda requests: remote_build_table(device, prof, requests, precision=precision, threads=threads,
                                               in_stride=in_stride, cache_dir=f"{device.cache_dir()}/lut")


def _device_cores(device: Any, runtime: str) -> int:
    """The board's usable cores, after checking it runs ``runtime`` (one line when it does not)."""
    from edgeprune.remote.checked import require_device_runtime

    info = require_device_runtime(device, runtime)
    return int((info.get("environment") or {}).get("logical_cores") or 1)
