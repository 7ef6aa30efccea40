"""Gated Batch Normalisation (GBN) for Gate Decorator: per-channel gates, Taylor scores, melting.

A gate phi (one scalar per channel, initialised to 1) multiplies the output of an *anchor*
layer: every affine BatchNorm whose channels belong to a prunable group, plus, where a group
member conv/linear feeds no BatchNorm, that layer itself. Gates live in ``GateSet`` keyed by
the anchor's module name; while attached, each gate is a parameter registered on its anchor
(``gbn_gate``, so ``model.parameters()`` and the training loop see it) and a forward hook
multiplies the anchor's output by it.

The score of a gate is the first-order Taylor estimate of the loss change when phi_i is set
to zero (the paper's Eq. 5-6): Theta(phi_i) = |dL/dphi_i * phi_i|, accumulated over the
batches of a tick — per batch then summed (``taylor="batch"``, as the authors' released
code does) or summed then the absolute value taken (``taylor="sum"``, the paper's formula
read literally). A group's channel score is the sum of its anchors' gate scores, since a
residual group's channels are gated once per branch (``group_scores``).

Melting folds phi into the anchor (BN: gamma *= phi, beta *= phi; conv/linear: the output
row of the weight and the bias *= phi), so y = phi * layer(x) holds exactly with no extra
operator and the model's module types are unchanged.

Invariants: ``detach`` leaves the model with no hook and no gate parameter (what Torch-
Pruning traces and what is exported); gate ``g`` always has as many entries as its anchor
has output channels (``attach`` checks it); ``slice`` keeps gates and scores aligned with
the channels ``PruneGraph.apply`` kept.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from edgeprune.prune.graph import PruneGraph

GATE = "gbn_gate"
TAYLOR_MODES = ("batch", "sum")

# group index -> [(anchor module name, anchor channel of each group channel)]
Anchors = list[list[tuple[str, list[int]]]]


def _out_width(mod: nn.Module) -> int:
    if isinstance(mod, _BatchNorm):
        return mod.num_features
    return mod.out_channels if isinstance(mod, nn.Conv2d) else mod.out_features


def _feeds_batchnorm(graph: PruneGraph, mod: nn.Module) -> bool:
    node = graph.dg.module2node.get(mod)
    return node is not None and any(isinstance(out.module, _BatchNorm) for out in node.outputs)


def group_anchors(graph: PruneGraph) -> Anchors:
    """For each group, the layers whose outputs carry a gate and how group channels map onto them."""
    names = {mod: name for name, mod in graph.model.named_modules()}
    result: Anchors = []
    for group in graph.groups:
        anchors: dict[str, list[int]] = {}
        producers: dict[str, list[int]] = {}
        for dep, idxs in group.tp_group:
            mod = dep.target.module
            if not graph.dg.is_out_channel_pruning_fn(dep.handler) or mod not in names:
                continue
            if isinstance(mod, _BatchNorm) and mod.affine:
                anchors.setdefault(names[mod], [int(i) for i in idxs])
            elif isinstance(mod, (nn.Conv2d, nn.Linear)) and not _feeds_batchnorm(graph, mod):
                producers.setdefault(names[mod], [int(i) for i in idxs])
        for name, idxs in producers.items():  # a conv/linear feeding no BN is gated itself
            anchors.setdefault(name, idxs)
        result.append(list(anchors.items()))
    return result


def _gate_hook(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
    gate = getattr(module, GATE)
    return output * gate.view(1, -1, *([1] * (output.dim() - 2)))


class GateSet:
    """The gates of one model, keyed by anchor name, with their accumulated Taylor scores."""

    def __init__(self, model: nn.Module, anchor_names: Sequence[str], taylor: str = "batch"):
        if taylor not in TAYLOR_MODES:
            raise ValueError(f"taylor must be one of {TAYLOR_MODES}, got {taylor!r}")
        self.model = model
        self.taylor = taylor
        mods = dict(model.named_modules())
        self.gates: dict[str, nn.Parameter] = {}
        for name in dict.fromkeys(anchor_names):
            weight = mods[name].weight
            self.gates[name] = nn.Parameter(torch.ones(_out_width(mods[name]), dtype=weight.dtype,
                                                       device=weight.device))
        self._acc: dict[str, torch.Tensor] = {}
        self.batches = 0
        self._hooks: dict[str, torch.utils.hooks.RemovableHandle] = {}
        self.reset_scores()

    @property
    def attached(self) -> bool:
        return bool(self._hooks)

    def attach(self) -> None:
        """Register every gate on its anchor and multiply the anchor's output by it."""
        mods = dict(self.model.named_modules())
        for name, gate in self.gates.items():
            mod = mods[name]
            if _out_width(mod) != gate.numel():
                raise RuntimeError(f"gate of {name} has {gate.numel()} entries, the layer {_out_width(mod)} channels")
            mod.register_parameter(GATE, gate)
            self._hooks[name] = mod.register_forward_hook(_gate_hook)

    def detach(self) -> None:
        """Remove hooks and gate parameters: the model is plain again (gates are kept here)."""
        mods = dict(self.model.named_modules())
        for name, handle in self._hooks.items():
            handle.remove()
            mods[name]._parameters.pop(GATE, None)
        self._hooks = {}

    def reset_scores(self) -> None:
        self._acc = {name: torch.zeros(g.numel(), dtype=torch.float64) for name, g in self.gates.items()}
        self.batches = 0

    def accumulate(self) -> None:
        """Add this batch's dL/dphi * phi (call after ``backward``, before the optimiser step)."""
        with torch.no_grad():
            for name, gate in self.gates.items():
                if gate.grad is None:
                    continue
                term = (gate.grad * gate).detach().double().cpu()
                self._acc[name] += term.abs() if self.taylor == "batch" else term
        self.batches += 1

    def scores(self) -> dict[str, np.ndarray]:
        """Theta per gate channel, accumulated since the last ``reset_scores``."""
        return {name: acc.abs().numpy() for name, acc in self._acc.items()}

    def add_l1_grad(self, strength: float) -> None:
        """Add the subgradient of strength * sum|phi| to the gates' gradients (the tock's sparsity term)."""
        if strength <= 0:
            return
        with torch.no_grad():
            for gate in self.gates.values():
                if gate.grad is not None:
                    gate.grad.add_(torch.sign(gate), alpha=strength)

    def slice(self, kept: dict[str, Sequence[int]]) -> None:
        """Keep only the listed channels of the named gates (and their scores); must be detached."""
        if self.attached:
            raise RuntimeError("detach the gates before slicing them")
        for name, idx in kept.items():
            index = torch.as_tensor(list(idx), dtype=torch.long)
            self.gates[name] = nn.Parameter(self.gates[name].detach()[index].clone())
            self._acc[name] = self._acc[name][index].clone()

    def values(self) -> dict[str, torch.Tensor]:
        return {name: g.detach().clone() for name, g in self.gates.items()}

    def melt(self) -> None:
        """Fold every gate into its anchor and remove all gates from the model."""
        self.detach()
        melt_into(self.model, self.values())


def melt_into(model: nn.Module, gates: dict[str, torch.Tensor]) -> None:
    """y = phi * layer(x) -> layer'(x): scale the anchor's per-channel affine terms by phi."""
    mods = dict(model.named_modules())
    with torch.no_grad():
        for name, phi in gates.items():
            mod = mods[name]
            if isinstance(mod, _BatchNorm):
                mod.weight.mul_(phi)
                mod.bias.mul_(phi)
            else:
                mod.weight.mul_(phi.view(-1, *([1] * (mod.weight.dim() - 1))))
                if mod.bias is not None:
                    mod.bias.mul_(phi)


def group_scores(anchors: Anchors, gate_scores: dict[str, np.ndarray], widths: Sequence[int]) -> list[np.ndarray]:
    """Channel scores per group: the sum over the group's gated anchors of their Theta.

    A group with no gate (e.g. only non-affine BNs) scores +inf, so it is never pruned.
    """
    out = []
    for group_anchors_, width in zip(anchors, widths):
        if not group_anchors_:
            out.append(np.full(width, np.inf))
            continue
        total = np.zeros(width, dtype=np.float64)
        for name, idxs in group_anchors_:
            total += gate_scores[name][np.asarray(idxs, dtype=np.int64)]
        out.append(total)
    return out


def anchor_keep(anchors: Anchors, keep: dict[int, Sequence[int]], widths: dict[str, int]) -> dict[str, list[int]]:
    """The channels each gated anchor keeps when group ``i`` keeps ``keep[i]``."""
    removed: dict[str, set[int]] = {}
    for gi, kept in keep.items():
        kept_set = set(int(k) for k in kept)
        for name, idxs in anchors[gi]:
            removed.setdefault(name, set()).update(a for j, a in enumerate(idxs) if j not in kept_set)
    return {name: [c for c in range(widths[name]) if c not in gone] for name, gone in removed.items()}
