"""Network Slimming (Liu et al., ICCV 2017, "Learning Efficient Convolutional Networks through
Network Slimming"), over the shared graph of coupled channel groups.

The paper in our words:

- Sparsity training (its Eq. 1): minimise  L = sum_(x,y) l(f(x, W), y) + lambda * sum_(gamma) |gamma|,
  the task loss plus an L1 penalty on every BN scaling factor gamma, so that unimportant channels'
  scales are driven towards zero. As in the paper's code, the non-smooth L1 term is handled by its
  subgradient: after each backward pass ``gamma.grad += lambda * sign(gamma)``
  (``l1_subgradient_hook``, run by ``train(..., after_backward=...)``). Only BNs that belong to a
  prunable group are penalised; the scales of layers that will not be pruned stay free.
- Channel score = |gamma|. When a channel is shared by several BNs (a residual addition couples
  every block's last BN), its score is the mean of |gamma| over those BNs. The paper's code
  ignored residual coupling; the mean is what Torch-Pruning's ``BNScaleImportance`` computes, and
  it is used here with no normalisation.
- One global threshold over all scores (the paper takes one percentile of all gammas): after
  sparsity training the scales of different layers are comparable, so ``NORMALIZE = False``.
  The shared selection rounds kept counts to the target's channel multiple and never lets a
  group fall below its minimum width (>= 1 channel: a layer whose gammas are all ~0 would
  otherwise vanish, the reference code's best-known crash).
- Multi-pass (the paper's iterative variant): ``passes = P`` repeats sparsity-train -> prune
  (-> optional fine-tune between passes). Each pass removes the same share q of the channels
  still there, q = 1 - (1 - ratio)^(1/P), so that (1 - q)^P = 1 - ratio. To stop rounding from
  drifting, pass k aims at N0 * (1 - ratio)^(k/P) remaining channels (N0: the channels of the
  BN-scored groups before pruning) and prunes the current model by 1 - target_k / current_k.

Options (``OPTIONS``, given as ``ctx.options``): sparsity (lambda, default 1e-4 as the paper's VGG/CIFAR runs; 1e-5 for
ResNets), sparsity_epochs (default 1; 0 prunes an already sparsity-trained model), passes (1),
pass_finetune_epochs (0), sparsity_lr (0.01), batch_size (128), sparsity_weight_decay (1e-4, the
paper's), augment (False), sparsity_max_steps, finetune_lr. The L1 step moves each gamma by about
lr * lambda / (1 - momentum) per SGD step: the paper's lambda works over its 160 from-scratch
epochs; a short sparsity fine-tune of a trained model needs a larger lambda (1e-3 to 1e-2).

Groups without any BN (e.g. a hidden Linear layer) have no scale to rank by: ``prune`` leaves
them whole and the ratio counts only BN-scored channels; ``scores`` gives them the model's
largest |gamma| so a latency search ranks them as important.

Invariant: ``prune`` works on a copy; every pruned group keeps at least
``min_keep(original width)`` channels (>= 1); the input model is never modified.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from edgeprune.errors import UserInputError
from edgeprune.prune import select
from edgeprune.prune.base import PruneContext, PruneResult, apply_counts, check_context, multiples, no_groups_error
from edgeprune.prune.base import floors as group_floors
from edgeprune.prune.graph import PruneGraph
from edgeprune.prune.importance import Importance
from edgeprune.prune.options import Option

NORMALIZE = False
DEFAULT_SPARSITY = 1e-4      # the paper's lambda for VGG on CIFAR; 1e-5 for ResNet/DenseNet
SMALL_GAMMA = 1e-2           # |gamma| below this counts as "driven to zero" in the statistics
OPTIONS = (
    Option("sparsity", "float", DEFAULT_SPARSITY, "lambda of the L1 penalty on BN scales"),
    Option("sparsity_epochs", "float", 1.0, "epochs of sparsity training per pass (0: prune as is)"),
    Option("passes", "int", 1, "sparsity-train -> prune repetitions"),
    Option("pass_finetune_epochs", "float", 0.0, "fine-tune epochs between passes"),
    Option("sparsity_lr", "float", 0.01, "SGD learning rate of sparsity training"),
    Option("batch_size", "int", 128, "images per SGD step"),
    Option("sparsity_weight_decay", "float", 1e-4, "weight decay of sparsity training"),
    Option("augment", "bool", False, "random crop + flip during sparsity training"),
    Option("sparsity_max_steps", "int", None, "caps the SGD steps of each sparsity training", optional=True),
    Option("finetune_lr", "float", None, "learning rate between passes (default: sparsity_lr)", optional=True),
)


def group_bns(graph: PruneGraph) -> list[list[nn.Module]]:
    """For each group, the affine BN layers whose output channels the group removes."""
    out = []
    for group in graph.groups:
        bns: list[nn.Module] = []
        for dep, _ in group.tp_group:
            mod = dep.target.module
            if (isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.affine
                    and graph.dg.is_out_channel_pruning_fn(dep.handler)
                    and all(mod is not b for b in bns)):
                bns.append(mod)
        out.append(bns)
    return out


def prunable_bns(graph: PruneGraph) -> list[nn.Module]:
    """Every BN of a prunable group, once each (the layers sparsity training penalises)."""
    unique: dict[int, nn.Module] = {}
    for bns in group_bns(graph):
        for bn in bns:
            unique.setdefault(id(bn), bn)
    return list(unique.values())


def l1_subgradient_hook(bns: list[nn.Module], sparsity: float) -> Callable[[nn.Module], None]:
    """An ``after_backward`` hook adding lambda * sign(gamma) to each listed BN's gamma gradient."""
    def hook(_model: nn.Module) -> None:
        with torch.no_grad():
            for bn in bns:
                if bn.weight.grad is not None:
                    bn.weight.grad.add_(torch.sign(bn.weight.detach()), alpha=sparsity)
    return hook


def small_gamma_share(bns: list[nn.Module], below: float = SMALL_GAMMA) -> float:
    """Share of the listed BNs' scaling factors with |gamma| < ``below``."""
    gammas = [bn.weight.detach().abs().flatten() for bn in bns]
    if not gammas:
        return 0.0
    flat = torch.cat(gammas)
    return float((flat < below).float().mean())


def gamma_histogram(bns: list[nn.Module], edges: Sequence[float]) -> list[int]:
    """Counts of the listed BNs' |gamma| in the bins ``edges`` (|gamma| above the last edge lands in the last bin)."""
    if not bns:
        return [0] * (len(edges) - 1)
    flat = torch.cat([bn.weight.detach().abs().flatten() for bn in bns]).double().numpy()
    counts, _ = np.histogram(np.clip(flat, edges[0], edges[-1]), bins=np.asarray(edges, dtype=float))
    return [int(c) for c in counts]


def bn_scale_scores(graph: PruneGraph) -> list[np.ndarray | None]:
    """Per group: mean |gamma| over its BNs for every channel, or None for a group without BN."""
    scorer = tp.importance.BNScaleImportance(group_reduction="mean", normalizer=None)
    out: list[np.ndarray | None] = []
    for group in graph.groups:
        imp = scorer(group.tp_group)
        out.append(None if imp is None else imp.detach().cpu().double().numpy())
    return out


def scores(graph: PruneGraph, ctx: PruneContext) -> list[np.ndarray]:
    """|gamma| scores of every group as the model stands (no training); BN-less groups rank highest."""
    raw = bn_scale_scores(graph)
    known = [s for s in raw if s is not None]
    top = max((float(s.max()) for s in known if s.size), default=1.0)
    return [s if s is not None else np.full(g.channels, top) for g, s in zip(graph.groups, raw)]


IMPORTANCES = {"slim": Importance("slim", scores, NORMALIZE, False,
                                 "|gamma| of each channel's BN (after sparsity training when run as a method)")}


def _options(ctx: PruneContext) -> dict[str, Any]:
    given = ctx.settings("slim", OPTIONS)
    opts = {"sparsity": given["sparsity"], "sparsity_epochs": given["sparsity_epochs"], "passes": given["passes"],
            "pass_finetune_epochs": given["pass_finetune_epochs"], "lr": given["sparsity_lr"],
            "batch_size": given["batch_size"], "weight_decay": given["sparsity_weight_decay"],
            "augment": given["augment"], "max_steps": given["sparsity_max_steps"],
            "finetune_lr": given["finetune_lr"] if given["finetune_lr"] is not None else given["sparsity_lr"]}
    if opts["sparsity"] < 0 or opts["sparsity_epochs"] < 0 or opts["pass_finetune_epochs"] < 0:
        raise UserInputError("slimming's sparsity, sparsity_epochs and pass_finetune_epochs must be >= 0",
                             "pass non-negative values (sparsity_epochs=0 prunes an already sparsity-trained model)")
    if isinstance(opts["passes"], bool) or not isinstance(opts["passes"], int) or opts["passes"] < 1:
        raise UserInputError(f"slimming passes must be a positive integer, got {opts['passes']!r}", "pass passes=1..N")
    return opts


def sparsity_train(model: nn.Module, graph: PruneGraph, ctx: PruneContext, opts: dict[str, Any],
                   seed: int) -> dict[str, Any]:
    """Train ``model`` in place with the L1 penalty on its prunable BNs; returns before/after statistics."""
    from edgeprune.train import train

    bns = prunable_bns(graph)
    stats = {"bns": len(bns), "lambda": opts["sparsity"], "epochs": opts["sparsity_epochs"],
             "small_gamma_share_before": small_gamma_share(bns)}
    history = train(model, ctx.require_data("slim"), epochs=opts["sparsity_epochs"], lr=opts["lr"],
                    batch_size=opts["batch_size"], weight_decay=opts["weight_decay"], augment=opts["augment"],
                    after_backward=l1_subgradient_hook(bns, opts["sparsity"]), max_steps=opts["max_steps"],
                    progress=ctx.progress, desc="sparsity", seed=seed)
    stats.update(small_gamma_share_after=small_gamma_share(bns), steps=history["steps"],
                 loss=history["loss"][-1] if history["loss"] else None)
    return stats


def pass_targets(total: int, ratio: float, passes: int) -> list[int]:
    """Channels left after each pass: round(total * (1 - ratio)^(k / passes)), k = 1..passes."""
    return [int(round(total * (1.0 - ratio) ** (k / passes))) for k in range(1, passes + 1)]


def _select(graph: PruneGraph, ctx: PruneContext, ratio: float, floors: dict[str, int]) -> tuple[list, list]:
    """Scores and kept counts for one pass: global threshold over BN-scored groups only."""
    raw = bn_scale_scores(graph)
    scored = [i for i, s in enumerate(raw) if s is not None]
    counts = [g.channels for g in graph.groups]
    if scored and ratio > 0:
        mults = multiples(graph, ctx.round_to)
        picked = select.global_counts([raw[i] for i in scored], ratio, ctx.round_to, ctx.min_ratio,
                                      normalize=NORMALIZE, multiples=[mults[i] for i in scored])
        for i, n in zip(scored, picked):
            group = graph.groups[i]
            counts[i] = max(n, min(group.channels, floors.get(group.root_name, 1)))
    full = [s if s is not None else np.ones(g.channels) for g, s in zip(graph.groups, raw)]
    return full, counts


def _widths(model: nn.Module, names: list[str]) -> dict[str, int]:
    mods = dict(model.named_modules())
    return {n: (mods[n].out_channels if isinstance(mods[n], nn.Conv2d) else mods[n].out_features) for n in names}


def _one_pass(model: nn.Module, ctx: PruneContext, opts: dict, k: int, target: int,
              floors: dict[str, int], scored_roots: set[str]) -> dict[str, Any]:
    """Sparsity-train, then prune ``model`` in place down to about ``target`` BN-scored channels."""
    graph = PruneGraph(model, ctx.example_inputs, ctx.ignored_layers)
    record: dict[str, Any] = {"pass": k + 1}
    if opts["sparsity_epochs"] > 0:
        record["sparsity"] = sparsity_train(model, graph, ctx, opts, seed=ctx.seed + k)
    current = sum(g.channels for g in graph.groups if g.root_name in scored_roots)
    ratio = 1.0 - target / current if current else 0.0
    record.update(channels_before=current, ratio=ratio if ratio > 0 else 0.0)
    if ratio > 0:
        full, counts = _select(graph, ctx, min(ratio, 0.999), floors)
        apply_counts(graph, full, counts)
    record["channels_after"] = sum(_widths(model, sorted(scored_roots)).values())
    return record


def _finetune(model: nn.Module, ctx: PruneContext, opts: dict, k: int) -> None:
    from edgeprune.train import train

    train(model, ctx.require_data("slim"), epochs=opts["pass_finetune_epochs"],
          lr=opts["finetune_lr"], batch_size=opts["batch_size"],
          augment=opts["augment"], progress=ctx.progress, desc=f"fine-tune pass {k + 1}", seed=ctx.seed + 1000 + k)


def prune(model: nn.Module, ctx: PruneContext) -> PruneResult:
    """Sparsity-train a copy of ``model``, prune its lowest-|gamma| channels globally (``passes`` times)."""
    check_context(ctx)
    opts = _options(ctx)
    if opts["sparsity_epochs"] > 0 or (opts["passes"] > 1 and opts["pass_finetune_epochs"] > 0):
        ctx.require_data("slim")
    pruned = copy.deepcopy(model).eval()
    graph = PruneGraph(pruned, ctx.example_inputs, ctx.ignored_layers)
    if not graph.groups:
        raise no_groups_error()
    raw = bn_scale_scores(graph)
    scored_roots = {g.root_name for g, s in zip(graph.groups, raw) if s is not None}
    if not scored_roots:
        raise UserInputError("network slimming needs BatchNorm layers after the prunable convolutions",
                             "use --method l1 or taylor for a model without BatchNorm")
    original = {g.root_name: g.channels for g in graph.groups}
    floors = dict(zip(original, group_floors(graph, ctx.round_to, ctx.min_ratio)))
    targets = pass_targets(sum(original[n] for n in scored_roots), ctx.ratio, opts["passes"])
    passes = []
    for k, target in enumerate(targets):
        passes.append(_one_pass(pruned, ctx, opts, k, target, floors, scored_roots))
        if k + 1 < len(targets) and opts["pass_finetune_epochs"] > 0:
            _finetune(pruned, ctx, opts, k)
    pruned.eval()
    after = _widths(pruned, list(original))
    records = [{"group": g.root_name, "before": g.channels, "after": after[g.root_name], "members": len(g.members)}
               for g in graph.groups]
    extra = {"sparsity": opts["sparsity"], "sparsity_epochs": opts["sparsity_epochs"], "passes": passes,
             "unscored_groups": sorted(set(original) - scored_roots)}
    return PruneResult(pruned, "slim", ctx.ratio, ctx.round_to, records, extra)
