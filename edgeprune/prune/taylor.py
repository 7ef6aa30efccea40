"""First-order Taylor importance (Molchanov et al., ICLR 2017 "Pruning Convolutional Neural Networks
for Resource Efficient Inference"; CVPR 2019 "Importance Estimation for Neural Network Pruning").

The criterion in our words: removing a set S of parameters changes the loss by about
-sum_(s in S) g_s * w_s to first order (g = dL/dw), so the importance of S is the magnitude of
that sum. CVPR 2019's group form takes S = every parameter that disappears with a channel. Here
S(c) for channel c of a coupled group is: each out-conv's filter c (and bias c), each BN's
gamma_c and beta_c, and every consumer layer's input slice c (a residual addition's channel
spans all of its blocks); a weight in two of these slices (W[c, c] of a conv that reads and
writes the same channels) counts once. Per mini-batch b:

    z_c(b) = sum_(s in S(c)) g_s(b) * w_s,    score_c = mean_b |z_c(b)|

averaged over ``taylor_batches`` batches of training data. ICLR 2017 takes the same first-order
term on feature maps (|mean over positions of activation x gradient|, averaged over examples);
CVPR 2019 takes it on parameters and squares it: ``taylor_square=True`` uses z^2.
Gradients are taken with the model in eval mode (BN uses its running statistics), so scoring
never changes BN buffers and measures the loss of the function that will be deployed.

Torch-Pruning 1.6's GroupTaylorImportance sums |g * w| element by element (or, multivariable,
takes |.| per layer before a group mean), never the signed sum over the whole group, and its BN
branch never fires for BatchNorm; so the reduction over the group is written here. The group
structure (which slices belong to channel c, root index mapping) is Torch-Pruning's.
Scores differ in scale between layers, hence ``NORMALIZE = True`` and global selection by ratio.

Invariant: batches come from a permutation seeded with ``ctx.seed``, so the scores (and the
pruned model) are deterministic given the seed; scoring leaves no gradients on the model.
"""
from __future__ import annotations

import math
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from edgeprune.errors import UserInputError
from edgeprune.prune.base import PruneContext, PruneResult, prune_with_scores
from edgeprune.prune.graph import PruneGraph
from edgeprune.prune.importance import Importance
from edgeprune.prune.options import Option

ALLOCATIONS = ("global", "uniform")  # prune_with_scores spreads a ratio either way
NORMALIZE = True
OPTIONS = (
    Option("taylor_batches", "int", 32, "mini-batches of training data the scores average over"),
    Option("taylor_batch_size", "int", 64, "images per mini-batch"),
    Option("taylor_square", "bool", False, "score by z^2 (CVPR 2019) instead of |z| (ICLR 2017)"),
)


def _gw(param: torch.Tensor | None) -> torch.Tensor | None:
    """g * w for a parameter with a gradient, else None."""
    if param is None or param.grad is None:
        return None
    return param.detach() * param.grad.detach()


def _conv_in_sums(gw: torch.Tensor, groups: int) -> torch.Tensor:
    """Per input channel sum of g*w of a conv weight (out, in/groups, k...), grouped convs included."""
    out_ch, per_group = gw.shape[0], gw.shape[1]
    return gw.reshape(groups, out_ch // groups, per_group, -1).sum(dim=(1, 3)).reshape(-1)


def layer_channel_sums(module: nn.Module, out_pruned: bool) -> torch.Tensor | None:
    """Per-channel sum of g*w over the slice of ``module`` that the pruned dimension indexes.

    Out-channel pruning: filter c of a conv/linear (plus its bias), or gamma_c + beta_c of a norm
    layer. In-channel pruning: input slice c of a conv/linear. None for parameter-free layers.
    """
    weight = _gw(getattr(module, "weight", None))
    if weight is None:
        return None
    bias = _gw(getattr(module, "bias", None))
    transposed = getattr(module, "transposed", False)
    if isinstance(module, nn.modules.conv._ConvNd) and transposed:
        return None  # transposed convs are not in the zoo; leave them out rather than guess
    if weight.dim() == 1:  # BatchNorm / GroupNorm / LayerNorm affine parameters
        return weight + bias if bias is not None else weight
    if out_pruned:
        sums = weight.flatten(1).sum(1)
        return sums + bias if bias is not None else sums
    if isinstance(module, nn.modules.conv._ConvNd):
        return _conv_in_sums(weight, module.groups)
    return weight.transpose(0, 1).flatten(1).sum(1)  # Linear input features


def _overlap(module: nn.Module, out_map: dict[int, int], in_map: dict[int, int]) -> dict[int, float]:
    """g*w of the weights a channel owns twice (a layer whose inputs and outputs are both in the group).

    Example: in a residual stage, the second conv of a block reads and writes the same channels, so
    its element W[c, c] is in both the out-slice and the in-slice of channel c; it is one parameter
    and must count once. ``out_map``/``in_map`` map root channel -> the layer's out/in index.
    """
    gw = _gw(getattr(module, "weight", None))
    if gw is None or gw.dim() < 2:
        return {}
    groups = getattr(module, "groups", 1)
    out_per_group, in_per_group = gw.shape[0] // groups, gw.shape[1]
    twice = {}
    for root, i in out_map.items():
        j = in_map.get(root)
        if j is not None and i // out_per_group == j // in_per_group:
            twice[root] = float(gw[i, j % in_per_group].sum())
    return twice


def group_contribution(graph: PruneGraph, index: int, bn_only: bool = False) -> torch.Tensor:
    """z_c = sum of g * w over the set of parameters that group ``index`` removes with channel c.

    ``bn_only``: only the group's BatchNorm layers count (gamma_c * dL/dgamma_c + beta_c * dL/dbeta_c
    summed over every BN of the coupled group: HALP's importance).
    """
    group = graph.groups[index]
    z = torch.zeros(group.channels, dtype=torch.float64)
    maps: dict[tuple[int, bool], dict[int, int]] = {}
    modules: dict[int, nn.Module] = {}
    for i, (dep, idxs) in enumerate(group.tp_group):
        module = dep.target.module
        if bn_only and not isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue
        out_pruned = bool(graph.dg.is_out_channel_pruning_fn(dep.handler))
        root_idxs = group.tp_group[i].root_idxs
        if (id(module), out_pruned) in maps or root_idxs is None or any(r is None for r in root_idxs):
            continue
        sums = layer_channel_sums(module, out_pruned)
        idx_list, root_list = [int(j) for j in idxs], [int(r) for r in root_idxs]
        if sums is None or not idx_list or max(idx_list) >= sums.numel():
            continue  # parameter-free, or a shared per-layer parameter (e.g. a one-slope PReLU)
        maps[(id(module), out_pruned)] = dict(zip(root_list, idx_list))
        modules[id(module)] = module
        picked = sums[torch.as_tensor(idx_list, dtype=torch.long)].double().cpu()
        z.scatter_add_(0, torch.as_tensor(root_list, dtype=torch.long), picked)
    for key, module in modules.items():
        if (key, True) in maps and (key, False) in maps:
            for root, twice in _overlap(module, maps[(key, True)], maps[(key, False)]).items():
                z[root] -= twice
    return z


def batch_plan(n_items: int, batches: int, batch_size: int, seed: int) -> list[list[int]]:
    """Index lists of up to ``batches`` disjoint batches from a permutation seeded with ``seed``."""
    if batches < 1 or batch_size < 1:
        raise UserInputError(f"taylor_batches ({batches}) and taylor_batch_size ({batch_size}) must be positive")
    order = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed)).tolist()
    count = min(batches, math.ceil(n_items / batch_size))
    return [order[k * batch_size:(k + 1) * batch_size] for k in range(count)]


def taylor_scores(graph: PruneGraph, ds, *, batches: int = 32, batch_size: int = 64, seed: int = 0,
                  square: bool = False, progress: bool = True, bn_only: bool = False) -> list[np.ndarray]:
    """Mean over batches of |z_c| (or z_c^2) for every channel of every group of ``graph``."""
    from edgeprune.data.memory import fetch

    model = graph.model
    was_training = model.training
    model.eval()
    totals = [torch.zeros(g.channels, dtype=torch.float64) for g in graph.groups]
    plan = batch_plan(len(ds), batches, batch_size, seed)
    try:
        for idx in tqdm(plan, desc="taylor", disable=not progress, file=sys.stderr, leave=False):
            x, y = fetch(ds, idx)
            model.zero_grad(set_to_none=True)
            with torch.enable_grad():
                F.cross_entropy(model(x), y).backward()
            for gi, total in enumerate(totals):
                z = group_contribution(graph, gi, bn_only)
                total += z * z if square else z.abs()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return [(t / len(plan)).numpy() for t in totals]


def scores(graph: PruneGraph, ctx: PruneContext) -> list[np.ndarray]:
    opts = ctx.settings("taylor", OPTIONS)
    return taylor_scores(graph, ctx.require_data("taylor"), batches=opts["taylor_batches"],
                         batch_size=opts["taylor_batch_size"], seed=ctx.seed,
                         square=opts["taylor_square"], progress=ctx.progress)


IMPORTANCES = {"taylor": Importance("taylor", scores, NORMALIZE, True,
                                     "first-order Taylor over every parameter a channel removes (Molchanov 2019)")}


def prune(model: nn.Module, ctx: PruneContext) -> PruneResult:
    ctx.settings("taylor", OPTIONS)
    ctx.require_data("taylor")
    return prune_with_scores(model, ctx, "taylor", scores, NORMALIZE)
