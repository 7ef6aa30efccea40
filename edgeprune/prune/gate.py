"""Gate Decorator (You et al., NeurIPS 2019): global filter pruning by gate Taylor scores, Tick-Tock.

The algorithm, in this project's words (gates and scores are in ``gate_gbn``):

- GBN: every BN whose channels belong to a prunable group gets a per-channel gate phi
  (init 1) on its output; the paper's Eq. 5-6 score a channel by Theta(phi_i) =
  |dL/dphi_i * phi_i|, the first-order Taylor estimate of the loss change if the gate
  became zero, summed over a tick's batches. Group Pruning: a coupled (e.g. residual)
  group's score is the sum of its member gates' scores. Scores are comparable across
  layers as they are (all are loss changes), so ``NORMALIZE = False``.
- Tick: conv/BN weights frozen, only the gates and the classifier train on a subset
  (``tick_batches`` batches) while Theta accumulates; then the lowest-scoring
  ``tick_ratio`` share of the *remaining* channels is removed physically (one global
  ranking over all groups), and the graph is rebuilt on the smaller model.
- Tock: every ``tock_every`` ticks, all weights fine-tune (``tock_epochs`` /
  ``tock_steps``) with the sparsity term lambda * sum |phi| (``gate_l1``, the paper's
  Eq. 7) added to the loss.
- Stop when the MACs (Torch-Pruning's ``count_ops_and_params``) are at most
  ``ctx.flops_target`` of the original, and/or when ``stop_when(model)`` is true (a
  callable option, evaluated on a melted copy; the latency-budget search uses it); with
  neither, when ``ctx.ratio`` of the prunable channels are gone. Stopping happens at the
  first tick that meets the target, so a FLOPs target is overshot by at most one tick.
- At the end the gates are melted into their BNs (gamma *= phi, beta *= phi) and removed:
  the result has exactly the original module types and exported operators.

Rounding is applied at every tick: a group's kept count is rounded to the nearest
multiple of ``round_to`` (never below the shared minimum width ``select.min_keep`` of its
original width, never above its current width), and the global threshold is lowered
until the rounded counts remove at least the tick's share, so every tick makes progress
and every intermediate model is already aligned. (Rounding only at the end would need to
restore channels that earlier ticks removed physically.)

Defaults are small (a few seconds for resnet20 on the Fashion-MNIST mini subset). For the
full benchmark (CIFAR/Fashion-MNIST, ResNet-56 class models) the paper-like settings are
``tick_ratio=0.02`` to ``0.05``, ``tick_batches`` = a tenth of an epoch (e.g. 40 at batch
128 on 50k images), ``tock_every=10``, ``tock_epochs=1``, ``gate_l1=1e-4`` — then the
usual fine-tune of ``edgeprune build``.

Invariant: the input model is never modified; the returned model has no gate, hook or new
module type, every group keeps >= 1 channel (>= its minimum width), and when the run stops
by its target the target holds on the returned model.
"""
from __future__ import annotations

import copy
import math
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from tqdm import tqdm

from edgeprune.data.memory import fetch
from edgeprune.errors import UserInputError
from edgeprune.prune import select
from edgeprune.prune.base import PruneContext, PruneResult, check_context, keep_lists, multiples, no_groups_error
from edgeprune.prune.base import floors as group_floors
from edgeprune.prune.gate_gbn import GateSet, anchor_keep, group_anchors, group_scores, melt_into
from edgeprune.prune.graph import PruneGraph
from edgeprune.prune.importance import Importance
from edgeprune.prune.options import from_dataclass
from edgeprune.train import train

NORMALIZE = False
METHOD = "gate"


@dataclass(frozen=True)
class GateSettings:
    """The method's knobs, read from ``ctx.options`` under the same names."""

    tick_ratio: float = 0.05          # share of the remaining channels removed per tick
    tick_batches: int = 8             # batches per tick (gates + classifier train, Theta accumulates)
    batch_size: int = 64
    tick_lr: float = 0.01
    tock_every: int = 4               # a tock after every this many ticks (0: never)
    tock_epochs: float = 1.0
    tock_steps: int | None = None     # caps a tock's SGD steps
    tock_lr: float = 0.01
    gate_l1: float = 1e-4             # lambda of the tock's lambda * sum |phi|
    weight_decay: float = 5e-4
    augment: bool = True
    taylor: str = "batch"             # "batch": sum of per-batch |g*phi|; "sum": |sum of g*phi|
    max_ticks: int = 1000
    stop_when: Callable[[nn.Module], bool] | None = None

    @classmethod
    def from_context(cls, ctx: PruneContext) -> "GateSettings":
        settings = cls(**ctx.settings(METHOD, OPTIONS))
        settings.check()
        return settings

    def check(self) -> None:
        if not 0.0 < float(self.tick_ratio) <= 0.5:
            raise UserInputError(f"tick_ratio must be in (0, 0.5], got {self.tick_ratio}", "the paper uses 0.02-0.1")
        for name in ("tick_batches", "batch_size", "max_ticks"):
            if int(getattr(self, name)) < 1:
                raise UserInputError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if int(self.tock_every) < 0 or float(self.tock_epochs) <= 0 or float(self.gate_l1) < 0:
            raise UserInputError(f"tock_every ({self.tock_every}) and gate_l1 ({self.gate_l1}) must be >= 0 and "
                                 f"tock_epochs ({self.tock_epochs}) > 0")
        if self.taylor not in ("batch", "sum"):
            raise UserInputError(f"taylor must be 'batch' or 'sum', got {self.taylor!r}")
        if self.stop_when is not None and not callable(self.stop_when):
            raise UserInputError("stop_when must be a callable taking the model and returning a bool")


OPTIONS = from_dataclass(GateSettings, choices={"taylor": ("batch", "sum")})


def tick_counts(scores: list[np.ndarray], widths: list[int], floors: list[int], n_remove: int,
                round_to: int | Sequence[int] | None) -> list[int]:
    """Kept count per group after one tick: the lowest-ranked channels go, counts rounded per group.

    ``round_to`` is one multiple for every group, or one per group.
    The global rank threshold k starts at ``n_remove`` and is lowered (k grows) to the
    smallest value whose rounded, floor-respecting counts remove at least ``n_remove``
    channels; when no k can, everything removable goes. Infinite scores are never ranked.
    """
    flat = np.concatenate(scores)
    owner = np.concatenate([np.full(w, i) for i, w in enumerate(widths)])
    order = np.argsort(flat, kind="stable")
    order = order[np.isfinite(flat[order])]

    mults = select.group_multiples(len(widths), None, round_to) if isinstance(round_to, (list, tuple)) \
        else select.group_multiples(len(widths), round_to, None)

    def counts_for(k: int) -> list[int]:
        below = np.bincount(owner[order[:k]], minlength=len(widths))
        return [select.round_channels(w - int(b), w, m, f) for w, b, f, m in zip(widths, below, floors, mults)]

    def removed(k: int) -> int:
        return sum(widths) - sum(counts_for(k))

    lo, hi = min(n_remove, len(order)), len(order)
    if removed(hi) < n_remove:
        return counts_for(hi)
    while lo < hi:  # removed(k) is non-decreasing in k
        mid = (lo + hi) // 2
        if removed(mid) >= n_remove:
            hi = mid
        else:
            lo = mid + 1
    return counts_for(lo)


def count_macs(model: nn.Module, example_inputs: torch.Tensor) -> int:
    macs, _ = tp.utils.count_ops_and_params(model, example_inputs)
    return int(macs)


def _graph(model: nn.Module, ctx: PruneContext) -> PruneGraph:
    graph = PruneGraph(model, ctx.example_inputs, ctx.ignored_layers)
    if not graph.groups:
        raise no_groups_error()
    return graph


def _anchor_names(graph: PruneGraph) -> list[str]:
    return [name for anchors in group_anchors(graph) for name, _ in anchors]


def gate_scores(model: nn.Module, graph: PruneGraph, ds: Any, settings: GateSettings, seed: int = 0,
                progress: bool = False) -> dict[str, np.ndarray]:
    """Theta of every gate of a copy of ``model`` (gates at 1, weights untouched), over one tick's batches."""
    work = copy.deepcopy(model)
    for p in work.parameters():
        p.requires_grad_(False)
    gates = GateSet(work, _anchor_names(graph), settings.taylor)
    gates.attach()
    work.train()
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
    n = min(settings.tick_batches, max(1, len(ds) // settings.batch_size))
    bs = settings.batch_size
    for i in tqdm(range(n), desc="gate scores", disable=not progress, file=sys.stderr, leave=False):
        x, y = fetch(ds, order[i * bs:(i + 1) * bs].tolist())
        for g in gates.gates.values():
            g.grad = None
        F.cross_entropy(work(x), y).backward()
        gates.accumulate()
    return gates.scores()


def scores(graph: PruneGraph, ctx: PruneContext) -> list[np.ndarray]:
    """Summed Taylor gate scores per group channel of ``graph.model`` (one tick's batches, nothing pruned)."""
    ds = ctx.require_data(METHOD)
    settings = GateSettings.from_context(ctx)
    theta = gate_scores(graph.model, graph, ds, settings, ctx.seed, ctx.progress)
    return group_scores(group_anchors(graph), theta, [g.channels for g in graph.groups])


IMPORTANCES = {"gate": Importance("gate", scores, NORMALIZE, True,
                                 "Gate Decorator's Taylor gate scores (one tick's batches)")}


def _tick(model: nn.Module, gates: GateSet, ds: Any, s: GateSettings, classifier: set[str], seed: int) -> None:
    """Train only the gates and the classifier for ``tick_batches`` batches, accumulating Theta."""
    trainable = {id(g) for g in gates.gates.values()}
    mods = dict(model.named_modules())
    for name in classifier:
        trainable.update(id(p) for p in mods[name].parameters())
    saved = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    gates.reset_scores()
    per_epoch = max(1, len(ds) // s.batch_size)
    try:
        train(model, ds, epochs=max(1.0, s.tick_batches / per_epoch), max_steps=s.tick_batches, lr=s.tick_lr,
              batch_size=s.batch_size, weight_decay=0.0, augment=s.augment,
              after_backward=lambda _m: gates.accumulate(), progress=False, desc="tick", seed=seed)
    finally:
        for p, flag in saved.items():
            p.requires_grad_(flag)


def _tock(model: nn.Module, gates: GateSet, ds: Any, s: GateSettings, number: int, progress: bool, seed: int) -> None:
    """Fine-tune all weights with lambda * sum |phi| on the gates."""
    train(model, ds, epochs=s.tock_epochs, max_steps=s.tock_steps, lr=s.tock_lr, batch_size=s.batch_size,
          weight_decay=s.weight_decay, augment=s.augment,
          after_backward=lambda _m: gates.add_l1_grad(s.gate_l1), progress=progress, desc=f"tock {number}",
          seed=seed)


class _Run:
    """The state of one Tick-Tock run on a private copy of the model."""

    def __init__(self, model: nn.Module, ctx: PruneContext, settings: GateSettings):
        self.ctx, self.s = ctx, settings
        self.model = copy.deepcopy(model).eval()
        graph = _graph(self.model, ctx)
        self.classifier = set(graph.outputs)
        self.before = {g.root_name: g.channels for g in graph.groups}
        self.floors = dict(zip(self.before, group_floors(graph, ctx.round_to, ctx.min_ratio)))
        self.total = sum(self.before.values())
        self.macs_before = count_macs(self.model, ctx.example_inputs)
        self.macs = self.macs_before
        self.channels = self.total
        self.gates = GateSet(self.model, _anchor_names(graph), settings.taylor)
        self.history: list[dict[str, Any]] = []
        self.ticks = self.tocks = 0

    def target_met(self) -> bool:
        ctx, s = self.ctx, self.s
        if ctx.flops_target is None and s.stop_when is None:
            return self.channels <= self.total - round(ctx.ratio * self.total)
        if ctx.flops_target is not None and self.macs <= ctx.flops_target * self.macs_before:
            return True
        return s.stop_when is not None and bool(s.stop_when(self.melted_copy()))

    def melted_copy(self) -> nn.Module:
        out = copy.deepcopy(self.model).eval()  # gates are detached here: a plain model
        melt_into(out, self.gates.values())
        return out

    def to_remove(self) -> int:
        n = math.ceil(self.s.tick_ratio * self.channels)
        if self.ctx.flops_target is None and self.s.stop_when is None:
            n = min(n, self.channels - (self.total - round(self.ctx.ratio * self.total)))
        return max(1, n)

    def prune_tick(self) -> int:
        """Rank all channels by summed Theta, remove the tick's share physically; returns channels removed."""
        graph = _graph(self.model, self.ctx)
        anchors = group_anchors(graph)
        widths = [g.channels for g in graph.groups]
        group_theta = group_scores(anchors, self.gates.scores(), widths)
        floors = [min(self.floors.get(g.root_name, 1), g.channels) for g in graph.groups]
        counts = tick_counts(group_theta, widths, floors, self.to_remove(), multiples(graph, self.ctx.round_to))
        removed = sum(widths) - sum(counts)
        if removed == 0:
            return 0
        keep = keep_lists(graph, group_theta, counts)
        kept = anchor_keep(anchors, keep, {name: g.numel() for name, g in self.gates.gates.items()})
        graph.apply(keep)
        self.gates.slice(kept)
        self.channels -= removed
        self.macs = count_macs(self.model, self.ctx.example_inputs)
        return removed


def _schedule(run: _Run, ds: Any) -> str:
    """Tick (and every ``tock_every`` ticks tock) until the target is met; returns why it stopped."""
    ctx, s = run.ctx, run.s
    if run.target_met():
        return "target"
    bar = tqdm(total=s.max_ticks, desc="gate tick-tock", unit="tick", disable=not ctx.progress, file=sys.stderr,
               dynamic_ncols=True)
    try:
        while run.ticks < s.max_ticks:
            run.gates.attach()
            _tick(run.model, run.gates, ds, s, run.classifier, ctx.seed + run.ticks)
            run.gates.detach()
            removed = run.prune_tick()
            run.ticks += 1
            run.history.append({"tick": run.ticks, "removed": removed, "channels": run.channels,
                                "macs_share": run.macs / run.macs_before, "tock": False})
            bar.update(1)
            bar.set_postfix(channels=run.channels, macs=f"{run.macs / run.macs_before:.3f}", refresh=False)
            if removed == 0:
                return "floor"
            if run.target_met():
                return "target"
            if s.tock_every and run.ticks % s.tock_every == 0:
                run.gates.attach()
                _tock(run.model, run.gates, ds, s, run.tocks + 1, ctx.progress, ctx.seed + 10_000 + run.tocks)
                run.gates.detach()
                run.tocks += 1
                run.history[-1]["tock"] = True
        return "max_ticks"
    finally:
        bar.close()
        run.gates.detach()


def _result(run: _Run, stopped: str) -> PruneResult:
    mods = dict(run.model.named_modules())
    groups = []
    for root, before in run.before.items():
        mod = mods[root]
        after = mod.out_channels if isinstance(mod, nn.Conv2d) else mod.out_features
        groups.append({"group": root, "before": before, "after": int(after)})
    extra = {"ticks": run.ticks, "tocks": run.tocks, "stopped": stopped,
             "macs_before": run.macs_before, "macs_after": run.macs, "macs_share": run.macs / run.macs_before,
             "channels_removed_share": 1.0 - run.channels / run.total, "flops_target": run.ctx.flops_target,
             "history": run.history}
    return PruneResult(run.model, METHOD, run.ctx.ratio, run.ctx.round_to, groups, extra)


def prune(model: nn.Module, ctx: PruneContext) -> PruneResult:
    """Gate Decorator on a copy of ``model``: Tick-Tock until the target, then melt the gates."""
    check_context(ctx)
    if ctx.flops_target is not None and not 0.0 < ctx.flops_target <= 1.0:
        raise UserInputError(f"flops target must be a share in (0, 1], got {ctx.flops_target}")
    ds = ctx.require_data(METHOD)
    run = _Run(model, ctx, GateSettings.from_context(ctx))
    stopped = _schedule(run, ds)
    run.gates.melt()
    run.model.eval()
    if stopped != "target":
        warnings.warn(f"gate decorator stopped ({stopped}) before its target: {run.macs / run.macs_before:.3f} "
                      f"of the MACs and {run.channels}/{run.total} channels remain", stacklevel=2)
    return _result(run, stopped)
