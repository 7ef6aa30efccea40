"""Fused units: which neighbouring layers the target's runtime executes as one, and the plan that uses them.

Candidates are found from the model's structure: a MobileNetV2 inverted residual block
(expand 1x1 + depthwise 3x3 + project 1x1 + identity add; without the add, its pairs
expand+depthwise and depthwise+project) and a ResNet basic block with an identity shortcut
(conv+ReLU, conv + add + ReLU). Each candidate has two free channel axes, a (its input
width) and b, so its table row is 2-D like a layer's. Both the candidate's row and its
layers' rows are measured (net of I/O cost, ``lut_rows``); at the model's full widths the
candidate replaces its layers only if the runtime fuses them by ``fusion.fuses``.
Invariant: every plan layer is counted exactly once in the fused plan — as itself or inside
one unit — and a unit is used only when its measured times pass the fusion test.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from edgeprune.measure.fusion import fuses, saving
from edgeprune.measure.lut import LayerSig
from edgeprune.search.plan import PlanLayer, table_requests


@dataclass(frozen=True)
class Candidate:
    unit: PlanLayer            # sig kind "unit"; in/out = axes a/b
    members: tuple[int, ...]   # indices into the plan


def _step(layer: PlanLayer, to: str | None, relu: bool) -> str:
    op = "dw" if layer.sig.kind == "depthwise" else "conv"
    return f"{op}-k{layer.sig.kernel[0]}-s{layer.sig.stride[0]}" + (f"-{to}" if to else "") + ("-relu" if relu else "")


def _unit(plan: list[PlanLayer], idx: list[int], steps: list[str], residual: bool, relu: bool,
          b_layer: PlanLayer) -> Candidate | None:
    first = plan[idx[0]]
    if b_layer.out_group is None:
        return None
    sig = LayerSig("unit", in_hw=first.sig.in_hw, relu=relu, steps=tuple(steps), residual=residual)
    name = "+".join(plan[i].name for i in idx)
    unit = PlanLayer(name, sig, first.in_c, b_layer.out_c, first.in_group, b_layer.out_group,
                     tuple(plan[i].name for i in idx))
    return Candidate(unit, tuple(idx))


def _mobilenet_block(plan, pos, name, block) -> list[Candidate]:
    idx = [pos[n] for n, _ in block.conv.named_modules(prefix=f"{name}.conv") if n in pos]
    layers = [plan[i] for i in idx]
    kinds = [la.sig.kind for la in layers]
    if kinds == ["conv", "depthwise", "conv"]:
        e, d, p = layers
        if block.use_res_connect and e.in_group is not None and e.in_group == p.out_group:
            steps = [_step(e, "b", True), _step(d, None, True), _step(p, "a", False)]
            return [c for c in [_unit(plan, idx, steps, True, False, e)] if c]
        pairs = [_unit(plan, idx[:2], [_step(e, "b", True), _step(d, None, True)], False, False, e),
                 _unit(plan, idx[1:], [_step(d, None, True), _step(p, "b", False)], False, False, p)]
        return [c for c in pairs if c]
    if kinds == ["depthwise", "conv"]:
        d, p = layers
        return [c for c in [_unit(plan, idx, [_step(d, None, True), _step(p, "b", False)], False, False, p)] if c]
    return []


def _basic_block(plan, pos, name, block) -> list[Candidate]:
    names = [f"{name}.conv1", f"{name}.conv2"]
    if block.downsample is not None or not all(n in pos for n in names):
        return []
    c1, c2 = plan[pos[names[0]]], plan[pos[names[1]]]
    if c1.sig.stride != (1, 1) or c1.in_group is None or c1.in_group != c2.out_group:
        return []
    steps = [_step(c1, "b", True), _step(c2, "a", False)]
    return [c for c in [_unit(plan, [pos[n] for n in names], steps, True, True, c1)] if c]


def candidates(model: nn.Module, plan: list[PlanLayer]) -> list[Candidate]:
    """Fusable chains of ``plan`` (the plan of ``model``), found by block structure."""
    pos = {layer.name: i for i, layer in enumerate(plan)}
    found: list[Candidate] = []
    for name, mod in model.named_modules():
        if hasattr(mod, "use_res_connect") and isinstance(getattr(mod, "conv", None), nn.Sequential):
            found += _mobilenet_block(plan, pos, name, mod)
        elif hasattr(mod, "conv1") and hasattr(mod, "conv2") and hasattr(mod, "downsample"):
            found += _basic_block(plan, pos, name, mod)
    return found


def unit_requests(found: list[Candidate]) -> list[tuple[LayerSig, int, int, set[int]]]:
    """Table requests for the candidates' rows (like ``plan.table_requests``)."""
    return [(c.unit.sig, c.unit.in_c, c.unit.out_c, {c.unit.in_c} if c.unit.in_group is None else set())
            for c in found]


def decide(plan: list[PlanLayer], found: list[Candidate], rows: dict[str, Any],
           counts: list[int]) -> list[dict[str, Any]]:
    """Each candidate's fusion test at ``counts`` (the full widths), largest saving first."""
    out = []
    for c in found:
        parts = [rows[plan[i].sig.key()].lookup(*plan[i].channels(counts)) for i in c.members]
        whole = rows[c.unit.sig.key()].lookup(*c.unit.channels(counts))
        out.append({"unit": c.unit.name, "signature": c.unit.sig.key(), "parts_ms": parts, "unit_ms": whole,
                    "saving_ms": saving(parts, whole), "fused": fuses(parts, whole), "candidate": c})
    return sorted(out, key=lambda d: -d["saving_ms"])


def fused_plan(plan: list[PlanLayer], decisions: list[dict[str, Any]]) -> list[PlanLayer]:
    """``plan`` with every fused candidate in place of its layers (no layer in two units)."""
    taken: dict[int, PlanLayer | None] = {}
    for d in decisions:
        c = d["candidate"]
        if d["fused"] and not any(i in taken for i in c.members):
            taken.update({i: None for i in c.members})
            taken[c.members[0]] = c.unit
    out = []
    for i, layer in enumerate(plan):
        if i not in taken:
            out.append(layer)
        elif taken[i] is not None:
            out.append(taken[i])
    return out


def plan_with_units(model: nn.Module, plan: list[PlanLayer], counts: list[int],
                    build: Callable[[list], dict[str, Any]]) -> tuple[list[PlanLayer], dict[str, Any]]:
    """Measure layers and candidate units (``build(requests)`` -> table), decide fusion at ``counts``.

    Returns the fused plan and the table, whose ``meta["fusion"]`` lists every decision.
    """
    found = candidates(model, plan)
    table = build(table_requests(plan) + unit_requests(found))
    decisions = decide(plan, found, table["rows"], counts)
    table["meta"]["fusion"] = [{k: v for k, v in d.items() if k != "candidate"} for d in decisions]
    return fused_plan(plan, decisions), table
