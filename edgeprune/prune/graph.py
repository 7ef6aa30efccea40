"""The shared graph of prunable channel groups, built on Torch-Pruning's dependency graph.

A *channel group* is a set of output channels that must be removed together: a conv's
out-channels plus everything coupled to them (its BN, the next layers' in-channels,
every member of a residual addition, depthwise convs, concatenation slices). Torch-Pruning
traces these couplings; this module names each group, records its latency context
(kernel, stride, groups, spatial size), and removes channels physically.

Invariants:
- ``groups`` is computed once, before any removal; group ``i`` owns a channel dimension
  that no other group changes, so scores computed up front stay valid while groups are
  pruned one after another.
- The classifier (the layer producing the model's output) is never a group root, so the
  number of classes never changes.
- ``apply`` never lets a group reach zero width (it raises instead).
- A group with a grouped (not depthwise) convolution among its members has ``slices`` > 1:
  the lcm of those convs' ``groups``; its kept count must be a multiple of ``slices`` and
  spread evenly over them, with the same offsets in every slice (``aligned``) when a grouped
  conv reads the group's channels (Torch-Pruning's in-channel pruning of a grouped conv keeps
  one slice's pattern for all). A grouped conv whose channels do not map one-to-one onto the
  group's makes the group ``fixed`` (``slices == channels``: it keeps its full width).
- ``ignored_layers`` are module names; a container's name keeps every conv/linear under it;
  an unknown name is a ``UserInputError`` naming some prunable layers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import math

import torch
import torch_pruning as tp
from torch import nn

from edgeprune.errors import UserInputError


@dataclass
class ChannelGroup:
    """One prunable group: its root layer, its coupled members and its latency context."""

    index: int
    root_name: str
    channels: int
    members: list[str]
    context: dict[str, Any] = field(default_factory=dict)
    tp_group: Any = field(default=None, repr=False, compare=False)
    slices: int = 1          # kept counts are multiples of this, spread evenly over the slices
    aligned: bool = False    # every slice keeps the same offsets (a grouped conv reads these channels)

    @property
    def is_residual(self) -> bool:
        """True when several convs share these channels (e.g. a residual addition)."""
        return len(self.context.get("out_convs", [])) > 1


def _output_layer_names(model: nn.Module, example_inputs: torch.Tensor) -> set[str]:
    """Names of modules whose output is (part of) the model's output."""
    produced: dict[int, str] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            hooks.append(mod.register_forward_hook(lambda m, i, o, n=name: produced.__setitem__(id(o), n)))
    try:
        with torch.no_grad():
            out = model(example_inputs)
    except (RuntimeError, ValueError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserInputError(f"the model cannot run on example inputs of shape {list(example_inputs.shape)}: {first}",
                             "pass example inputs shaped like one real batch, e.g. torch.zeros(1, 3, 32, 32)") from exc
    finally:
        for h in hooks:
            h.remove()
    outs = out if isinstance(out, (tuple, list)) else [out]
    return {produced[id(o)] for o in outs if id(o) in produced}


def _record_shapes(model: nn.Module, example_inputs: torch.Tensor) -> dict[str, dict[str, Any]]:
    """Input/output spatial sizes of every conv/linear layer, from one forward pass."""
    shapes: dict[str, dict[str, Any]] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            def hook(m, inp, out, n=name):
                shapes[n] = {"in_shape": list(inp[0].shape), "out_shape": list(out.shape)}
            hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _prunable_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def kept_layers(model: nn.Module, names: Sequence[str]) -> set[str]:
    """Module names to keep whole: each name itself and, for a container, every conv/linear under it."""
    modules = dict(model.named_modules())
    prunable = _prunable_names(model)
    unknown = [n for n in names if not n or n not in modules]
    if unknown:
        listed = ", ".join(prunable[:6]) + (", ..." if len(prunable) > 6 else "")
        raise UserInputError(f"--keep names no layer of this model: {', '.join(repr(n) for n in unknown)}",
                             f"pass a module name or prefix such as {listed}")
    kept = set(names)
    for name in names:
        kept.update(p for p in prunable if p.startswith(name + "."))
    return kept


def _slicing(dg, tp_group, channels: int) -> tuple[int, bool]:
    """(slices, aligned) that grouped (non-depthwise) convs among the group's members require."""
    slices, aligned = 1, False
    for dep, idxs in tp_group:
        mod = dep.target.module
        if not isinstance(mod, nn.Conv2d) or mod.groups == 1 or mod.groups == mod.out_channels:
            continue
        reads = not dg.is_out_channel_pruning_fn(dep.handler)
        width = mod.in_channels if reads else mod.out_channels
        if width != channels or [int(i) for i in idxs] != list(range(channels)):
            return channels, True  # not a one-to-one slice of this group: keep the group whole
        slices = math.lcm(slices, mod.groups)
        aligned = aligned or reads
    return slices, aligned


class PruneGraph:
    """Prunable channel groups of ``model`` (which is modified in place by ``apply``)."""

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor,
                 ignored_layers: Sequence[str] = ()):
        model.eval()
        self.model = model
        self.example_inputs = example_inputs
        names = dict(model.named_modules())
        self.kept = kept_layers(model, ignored_layers)       # layers the user keeps whole
        self.outputs = _output_layer_names(model, example_inputs)  # the classifier: never a group root
        self.ignored = self.kept | self.outputs
        self.dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
        self._names = {mod: name for name, mod in names.items()}
        self.shapes = shapes = _record_shapes(model, example_inputs)  # every conv/linear's in/out shape
        ignored_mods = [names[n] for n in self.ignored]
        self.groups: list[ChannelGroup] = []
        for tp_group in self.dg.get_all_groups(ignored_layers=ignored_mods,
                                               root_module_types=(nn.Conv2d, nn.Linear)):
            self.groups.append(self._describe(len(self.groups), tp_group, shapes))

    def _describe(self, index: int, tp_group, shapes) -> ChannelGroup:
        root = tp_group[0].dep.target.module
        root_name = self._names[root]
        members, out_convs, in_layers = [], [], []
        for dep, _ in tp_group:
            mod = dep.target.module
            name = self._names.get(mod)
            if name is None:
                continue
            if name not in members:
                members.append(name)
            out_pruned = self.dg.is_out_channel_pruning_fn(dep.handler)
            if out_pruned and isinstance(mod, nn.Conv2d) and name not in out_convs:
                out_convs.append(name)
            elif not out_pruned and isinstance(mod, (nn.Conv2d, nn.Linear)) and name not in in_layers:
                in_layers.append(name)
        conv = root if isinstance(root, nn.Conv2d) else None
        context = {
            "type": type(root).__name__,
            "kernel": list(conv.kernel_size) if conv else [1, 1],
            "stride": list(conv.stride) if conv else [1, 1],
            "groups": conv.groups if conv else 1,
            "depthwise": bool(conv and conv.groups > 1 and conv.groups == conv.out_channels),
            "out_convs": out_convs,
            "consumers": in_layers,
            **shapes.get(root_name, {}),
        }
        channels = len(tp_group[0].idxs)
        slices, aligned = _slicing(self.dg, tp_group, channels)
        context["slices"] = slices
        return ChannelGroup(index, root_name, channels, members, context, tp_group, slices, aligned)

    def apply(self, keep: dict[int, Sequence[int]]) -> None:
        """Physically remove every channel of group ``i`` not listed in ``keep[i]``."""
        for gi, kept in keep.items():
            group = self.groups[gi]
            kept_set = set(int(k) for k in kept)
            if not kept_set:
                raise UserInputError(f"group {group.root_name} would reach zero channels")
            remove = [c for c in range(group.channels) if c not in kept_set]
            if not remove:
                continue
            root = group.tp_group[0].dep.target.module
            handler = group.tp_group[0].dep.handler
            self.dg.get_pruning_group(root, handler, remove).prune()

    def channel_counts(self) -> dict[str, int]:
        """Current out-channel count of every group root (after ``apply``)."""
        mods = dict(self.model.named_modules())
        counts = {}
        for g in self.groups:
            mod = mods[g.root_name]
            counts[g.root_name] = mod.out_channels if isinstance(mod, nn.Conv2d) else mod.out_features
        return counts
