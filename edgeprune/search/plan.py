"""A model's *latency plan*: every conv/linear layer as (signature, in-channel group, out-channel group).

The plan is what connects the prune graph to the latency table: layer L's latency is
``table[L.sig](in_c, out_c)`` where ``in_c`` is the kept width of the group that owns L's input
channels (or L's fixed input width) and ``out_c`` that of the group owning its output channels.
Invariant: the plan's layers are exactly the model's Conv2d/Linear modules, and evaluating it
at the groups' full widths gives each layer's current (in, out) channels.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from edgeprune.errors import UserInputError
from edgeprune.measure.lut import LayerSig
from edgeprune.prune.graph import PruneGraph


@dataclass
class PlanLayer:
    name: str
    sig: LayerSig
    in_c: int
    out_c: int
    in_group: int | None = None   # group index owning the input channels, or None if fixed
    out_group: int | None = None  # group index owning the output channels, or None if fixed
    members: tuple[str, ...] = ()  # a fused unit (``search.units``): the layers it stands for

    def channels(self, counts: list[int]) -> tuple[int, int]:
        cin = counts[self.in_group] if self.in_group is not None else self.in_c
        cout = counts[self.out_group] if self.out_group is not None else self.out_c
        if self.sig.kind == "depthwise":
            cin = cout
        return cin, cout


def _sig(mod: nn.Module, in_hw: tuple[int, int]) -> LayerSig:
    if isinstance(mod, nn.Linear):  # timed as a 1x1 conv on a 1x1 map: targets take rank-4 inputs only
        return LayerSig("conv", relu=False)
    depthwise = mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels
    if mod.groups > 1 and not depthwise:
        raise UserInputError(f"the latency-budget search cannot time grouped convolutions yet ({mod.groups} groups)",
                             "prune this model by --ratio instead of --budget-ms")
    pad = mod.padding if isinstance(mod.padding, tuple) else (0, 0)
    return LayerSig("depthwise" if depthwise else "conv", tuple(mod.kernel_size), tuple(mod.stride),
                    tuple(pad), tuple(in_hw), relu=True)


def build_plan(graph: PruneGraph) -> list[PlanLayer]:
    """The latency plan of ``graph.model`` (call before ``graph.apply``)."""
    sizes = {name: tuple(rec["in_shape"][2:4]) if len(rec["in_shape"]) == 4 else (1, 1)
             for name, rec in graph.shapes.items()}
    out_owner, in_owner = {}, {}
    for g in graph.groups:
        for name in g.context["out_convs"]:
            out_owner[name] = g.index
        for name in g.context["consumers"]:
            in_owner.setdefault(name, g.index)
    plan = []
    for name, mod in graph.model.named_modules():
        if not isinstance(mod, (nn.Conv2d, nn.Linear)) or name not in sizes:
            continue
        cin = mod.in_channels if isinstance(mod, nn.Conv2d) else mod.in_features
        cout = mod.out_channels if isinstance(mod, nn.Conv2d) else mod.out_features
        sig = _sig(mod, sizes[name])
        out_g = out_owner.get(name)
        in_g = out_g if sig.kind == "depthwise" else in_owner.get(name)
        plan.append(PlanLayer(name, sig, cin, cout, in_g, out_g))
    return plan


def table_requests(plan: list[PlanLayer]) -> list[tuple[LayerSig, int, int, set[int]]]:
    """(signature, widest in, widest out, fixed in-widths) per layer — what ``build_table`` needs."""
    return [(layer.sig, layer.in_c, layer.out_c, {layer.in_c} if layer.in_group is None else set())
            for layer in plan]
