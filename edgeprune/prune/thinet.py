"""ThiNet (Luo, Wu & Lin, ICCV 2017): prune layer i's filters by how well layer i+1 does without them.

The algorithm, in this project's words (statistics are gathered in ``thinet_stats``):

- Data (the paper's collection of training examples): sample ``samples`` training images and ``positions`` random
  output locations per image of each consumer layer (layer i+1). At a sampled output y of the
  consumer, input channel c contributes x_hat_c, the partial sum of its weights times its inputs
  over the kernel window, and y = sum_c x_hat_c (the decomposition of Section 3.2).
- Channel selection (Eq. 6 and Algorithm 1, greedy): grow the set T of channels to *remove*
  one at a time, each time adding the channel that keeps sum over samples of
  (sum_{c in T} x_hat_c)^2 smallest, until |T| is the removed share of the layer; keep the rest.
  With G = sum x_hat x_hat^T the objective is 1_T^T G 1_T, so a step costs O(C).
- Least squares (Eq. 7): the per-channel scales w minimising sum (y - w^T x_hat_kept)^2 are
  w = (X^T X)^-1 X^T y, i.e. solve(G[K, K], G[K, :] 1); they are folded into the consumer's
  weights on the kept channels' inputs, so the pruned network has the same operators.
- Layer by layer in forward order, statistics of each layer are taken on the network as pruned
  so far; ``finetune_steps`` > 0 runs a short fine-tune after each layer (the paper fine-tunes
  between layers; 0 by default, since the pipeline fine-tunes at the end).
- Every layer loses the same share: counts = ``select.uniform_counts`` (shared rounding and
  minimum width); the ``counts`` option (kept channels per graph group) overrides them.

Generalisations beyond the paper's plain chain (documented choices):

- Coupled groups with several consumers (all members of a residual addition feed every next
  block): the objective is the sum over consumers of each consumer's *mean* squared error per
  sampled output (G_L / rows_L), so consumers of different sizes weigh alike; each consumer gets
  its own least-squares scales.
- A Linear consumer (global pooling then fc) is a conv with 1x1 "kernels" on the pooled
  features; a Linear fed by a flattened map sums a channel's H*W features into its x_hat.
- Depthwise convs are pruned with their input group, so their group's consumer is the next
  dense (non-depthwise) layer, e.g. MobileNetV2's projection conv. Grouped (non-depthwise)
  consumers are skipped; a group with no usable consumer falls back to L1 filter magnitude
  (reported in ``extra["fallback"]``).
- ``scores`` (for the latency-budget search, ``NORMALIZE = True``) ranks channels by the greedy
  order on the unpruned model: the score of the k-th removed channel is the running maximum of
  the relative reconstruction error after removing the first k, plus a small rank term, so
  channels removed first score lowest and top-k selection keeps the greedy complement.

Options (``OPTIONS``, given as ``ctx.options``): ``samples`` images (256), ``positions`` per image (10),
``channels_per_location`` output channels sampled per location (16), ``batch_size`` (64),
``rescale`` (True; False skips the least-squares step), ``finetune_steps`` (0), ``finetune_lr``
(0.01), ``finetune_batch_size`` (64), ``counts`` (None). Cost: one pass over the samples per
layer, stopped after the layer's last consumer.

Invariant: the input model is never modified; every group keeps >= its minimum width; the
returned model has the original module types (scales are folded into existing weights).
"""
from __future__ import annotations

import copy
import sys
from typing import Any, Sequence

import numpy as np
import torch
import torch_pruning as tp
from torch import nn
from tqdm import tqdm

from edgeprune.errors import UserInputError
from edgeprune.prune import select
from edgeprune.prune.base import PruneContext, PruneResult, check_context, multiples, no_groups_error
from edgeprune.prune.graph import ChannelGroup, PruneGraph
from edgeprune.prune.importance import Importance
from edgeprune.prune.options import Option
from edgeprune.prune.thinet_stats import Probe, collect, group_probes
from edgeprune.train import train

NORMALIZE = True
METHOD = "thinet"
OPTIONS = (
    Option("samples", "int", 256, "training images sampled for the statistics"),
    Option("positions", "int", 10, "output positions sampled per image"),
    Option("channels_per_location", "int", 16, "output channels sampled per position"),
    Option("batch_size", "int", 64, "images per forward pass"),
    Option("rescale", "bool", True, "fold the least-squares scales into the next layer"),
    Option("finetune_steps", "int", 0, "SGD steps after each layer (0: none)"),
    Option("finetune_lr", "float", 0.01, "learning rate of those steps"),
    Option("finetune_batch_size", "int", 64, "images per fine-tune step"),
    Option("counts", "ints", None, "kept channels per prunable group (overrides the ratio)", optional=True),
)


# -- the paper's two optimisation steps, on a Gram matrix -----------------------------------------
def greedy_removal(gram: np.ndarray, n_remove: int | None = None, slices: int = 1) -> tuple[list[int], np.ndarray]:
    """Algorithm 1: the removal order T and the objective 1_T^T G 1_T after each step.

    ``slices`` > 1: the channels form that many equal contiguous slices and each slice loses
    ``n_remove / slices`` of them (a grouped convolution's channels must stay evenly spread).
    """
    gram = np.asarray(gram, dtype=np.float64)
    c = gram.shape[0]
    n = c if n_remove is None else int(n_remove)
    if not 0 <= n <= c or c % slices or n % slices:
        raise ValueError(f"cannot remove {n} of {c} channels evenly over {slices} slices")
    owner, quota = np.arange(c) // (c // slices), np.full(slices, n // slices)
    diag = np.diag(gram).copy()
    cross = np.zeros(c)              # cross[j] = sum_{t in T} G[t, j]
    free = np.ones(c, dtype=bool)
    order, values, value = [], np.zeros(n), 0.0
    for step in range(n):
        cost = np.where(free & (quota[owner] > 0), 2.0 * cross + diag, np.inf)
        j = int(np.argmin(cost))
        value += float(cost[j])
        order.append(j)
        free[j] = False
        quota[owner[j]] -= 1
        cross += gram[j]
        values[step] = value
    return order, values


def greedy_kept(gram: np.ndarray, channels: int, keep_n: int, slices: int = 1, aligned: bool = False) -> list[int]:
    """The channels Algorithm 1 keeps, evenly over ``slices`` (with the same offsets in each when ``aligned``)."""
    if aligned and slices > 1:
        width = channels // slices
        folded = np.asarray(gram, dtype=np.float64).reshape(slices, width, slices, width).sum(axis=(0, 2))
        order, _ = greedy_removal(folded, (channels - keep_n) // slices)
        removed = {s * width + o for s in range(slices) for o in order}
    else:
        removed = set(greedy_removal(gram, channels - keep_n, slices)[0])
    return [c for c in range(channels) if c not in removed]


def least_squares_scales(gram: np.ndarray, kept: Sequence[int], ridge: float = 1e-9) -> np.ndarray:
    """Eq. 7: w = argmin sum (y - w^T x_hat_K)^2 = solve(G[K, K], G[K, :] 1) (tiny ridge for rank)."""
    gram = np.asarray(gram, dtype=np.float64)
    k = np.asarray(kept, dtype=np.int64)
    a = gram[np.ix_(k, k)]
    b = gram[k].sum(axis=1)
    a = a + ridge * max(float(np.trace(a)) / max(len(k), 1), 1e-30) * np.eye(len(k))
    return np.linalg.solve(a, b)


def reconstruction_error(gram: np.ndarray, kept: Sequence[int], scales: Sequence[float] | None = None) -> float:
    """sum over the Gram's rows of (y - w^T x_hat_K)^2; w = 1 when ``scales`` is None."""
    gram = np.asarray(gram, dtype=np.float64)
    k = np.asarray(kept, dtype=np.int64)
    w = np.ones(len(k)) if scales is None else np.asarray(scales, dtype=np.float64)
    total = float(gram.sum())
    cross = float(w @ gram[k].sum(axis=1))
    return total - 2.0 * cross + float(w @ gram[np.ix_(k, k)] @ w)


# -- one group ------------------------------------------------------------------------------------
def forward_order(graph: PruneGraph) -> list[ChannelGroup]:
    """Groups sorted by when their first out-conv runs in a forward pass (the paper's layer order)."""
    seen: dict[str, int] = {}

    def note(name: str) -> None:  # a forward hook must return None, or it replaces the output
        seen.setdefault(name, len(seen))

    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: note(n))
             for n, m in graph.model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            graph.model(graph.example_inputs)
    finally:
        for h in hooks:
            h.remove()

    def first(g: ChannelGroup) -> int:
        return min((seen.get(n, 1 << 30) for n in g.context.get("out_convs") or [g.root_name]), default=1 << 30)
    return sorted(graph.groups, key=lambda g: (first(g), g.index))


def _settings(ctx: PruneContext) -> dict[str, Any]:
    opts = ctx.settings(METHOD, OPTIONS)
    s = {"images": opts["samples"], "positions": opts["positions"], "out_per_row": opts["channels_per_location"],
         "batch_size": opts["batch_size"]}
    if min(s.values()) < 1:
        raise UserInputError(f"thinet sampling options must be positive, got {s}",
                             "pass positive samples, positions, channels_per_location and batch_size")
    return s


def measure(graph: PruneGraph, groups: Sequence[ChannelGroup], ctx: PruneContext) -> dict[int, list[Probe]]:
    """Consumer statistics of ``groups`` on the model as it is now, in one pass over the samples."""
    s = _settings(ctx)
    probes = {g.index: group_probes(graph, g, positions=s["positions"], out_per_row=s["out_per_row"],
                                    seed=ctx.seed * 100_003 + 1009 * g.index) for g in groups}
    collect(graph.model, [p for ps in probes.values() for p in ps], ctx.require_data(METHOD),
            images=s["images"], seed=ctx.seed, batch_size=s["batch_size"])
    return probes


def objective(probes: Sequence[Probe]) -> np.ndarray:
    """The group's greedy objective matrix: the sum of its consumers' per-sample Grams."""
    return sum(p.mean_gram().numpy() for p in probes)


def _magnitude(group: ChannelGroup) -> np.ndarray:
    scorer = tp.importance.GroupMagnitudeImportance(p=1, group_reduction="mean", normalizer=None)
    return scorer(group.tp_group).detach().cpu().numpy()


def select_and_rescale(group: ChannelGroup, probes: Sequence[Probe], keep_n: int,
                       rescale: bool = True) -> tuple[list[int], dict[str, Any]]:
    """Greedy-select the channels to keep and fold the least-squares scales into each consumer."""
    if not probes:
        return select.keep_indices(_magnitude(group), keep_n, group.slices, group.aligned), {"fallback": "l1"}
    kept = greedy_kept(objective(probes), group.channels, keep_n, group.slices, group.aligned)
    energy = sum(float(p.mean_gram().sum()) for p in probes)
    before = sum(reconstruction_error(p.mean_gram().numpy(), kept) for p in probes)
    after = before
    if rescale and len(kept) < group.channels:
        after = 0.0
        for p in probes:
            g = p.mean_gram().numpy()
            w = least_squares_scales(g, kept)
            after += reconstruction_error(g, kept, w)
            p.scale_inputs(kept, w)
    denom = max(energy, 1e-30)
    return kept, {"rel_error_before_ls": before / denom, "rel_error": after / denom,
                  "consumers": [p.name for p in probes]}


def _finetune(model: nn.Module, ctx: PruneContext, step: int) -> None:
    opts = ctx.settings(METHOD, OPTIONS)
    steps = opts["finetune_steps"]
    if steps <= 0:
        return
    train(model, ctx.require_data(METHOD), epochs=1, max_steps=steps, lr=opts["finetune_lr"],
          batch_size=opts["finetune_batch_size"], progress=False, desc="thinet fine-tune",
          seed=ctx.seed + step)
    model.eval()


def _kept_counts(graph: PruneGraph, ctx: PruneContext) -> list[int]:
    counts = ctx.settings(METHOD, OPTIONS)["counts"]
    if counts is None:
        return select.uniform_counts([g.channels for g in graph.groups], ctx.ratio, ctx.round_to, ctx.min_ratio,
                                     multiples=multiples(graph, ctx.round_to))
    counts = [int(n) for n in counts]
    if len(counts) != len(graph.groups) or any(not 1 <= n <= g.channels for n, g in zip(counts, graph.groups)):
        raise UserInputError(f"thinet counts must give 1..width kept channels for each of {len(graph.groups)} groups",
                             "pass one count per prunable group")
    return counts


# -- the method -----------------------------------------------------------------------------------
def prune(model: nn.Module, ctx: PruneContext) -> PruneResult:
    """ThiNet layer by layer on a copy of ``model``: greedy selection, least squares, removal."""
    check_context(ctx)
    ctx.require_data(METHOD)
    pruned = copy.deepcopy(model).eval()
    graph = PruneGraph(pruned, ctx.example_inputs, ctx.ignored_layers)
    if not graph.groups:
        raise no_groups_error()
    counts = _kept_counts(graph, ctx)
    records: dict[int, dict[str, Any]] = {}
    fallback = []
    rescale = ctx.settings(METHOD, OPTIONS)["rescale"]
    bar = tqdm(forward_order(graph), desc="thinet", unit="layer", disable=not ctx.progress, file=sys.stderr)
    for step, group in enumerate(bar):
        bar.set_postfix_str(group.root_name, refresh=False)
        keep_n = counts[group.index]
        if keep_n >= group.channels:
            info: dict[str, Any] = {"rel_error": 0.0}
        else:
            probes = measure(graph, [group], ctx)[group.index]
            kept, info = select_and_rescale(group, probes, keep_n, rescale)
            graph.apply({group.index: kept})
            _finetune(pruned, ctx, step)
        if "fallback" in info:
            fallback.append(group.root_name)
        records[group.index] = {"group": group.root_name, "before": group.channels, "after": keep_n,
                                "members": len(group.members), **info}
    bar.close()
    extra = {"fallback": fallback} if fallback else {}
    return PruneResult(pruned.eval(), METHOD, ctx.ratio, ctx.round_to,
                       [records[g.index] for g in graph.groups], extra)


def order_scores(gram: np.ndarray) -> np.ndarray:
    """Per-channel scores from the full greedy order: removed-first scores lowest (see module doc)."""
    c = gram.shape[0]
    order, values = greedy_removal(gram)
    energy = max(float(np.asarray(gram).sum()), 1e-30)
    level = np.maximum.accumulate(np.maximum(values, 0.0) / energy)
    scores = np.empty(c)
    scores[np.asarray(order)] = level + 1e-6 * (np.arange(c) + 1) / c
    return scores


def scores(graph: PruneGraph, ctx: PruneContext) -> list[np.ndarray]:
    """ThiNet channel scores of every group of ``graph`` (the model is not changed)."""
    probes = measure(graph, graph.groups, ctx)
    return [order_scores(objective(probes[g.index])) if probes[g.index] else _magnitude(g)
            for g in graph.groups]


IMPORTANCES = {"thinet": Importance("thinet", scores, NORMALIZE, True, "ThiNet's greedy reconstruction order")}
