"""BN Taylor importance (Shen et al., NeurIPS 2022, "Structural Pruning via Latency-Saliency Knapsack", HALP).

In our words: removing channel c of a coupled group sets every one of the group's BatchNorm
outputs for c to zero, which to first order changes the loss by the sum over those BN layers of
gamma_c * dL/dgamma_c + beta_c * dL/dbeta_c. The channel's importance is the magnitude of that
sum, averaged over ``taylor_batches`` mini-batches of training data (HALP uses the BN's
parameters only, and reports it ranks better than weight norms). Because the score estimates a
change of the loss, it is comparable across groups as it is: ``NORMALIZE = False``, which is
what lets a knapsack trade one group's channels against another's.

The per-batch sum over the group is ``taylor.group_contribution(..., bn_only=True)``; batches,
seeding and eval-mode gradients are ``taylor.taylor_scores``'s. A group without a BN layer has
no score of this kind; it is scored by the full group Taylor sum instead (``taylor``).
"""
from __future__ import annotations

import numpy as np
from torch import nn

from edgeprune.prune.base import PruneContext, PruneResult, prune_with_scores
from edgeprune.prune.graph import PruneGraph
from edgeprune.prune.importance import Importance
from edgeprune.prune.options import Option
from edgeprune.prune.taylor import taylor_scores

METHOD = "taylor_bn"
ALLOCATIONS = ("global", "uniform")  # prune_with_scores spreads a ratio either way
NORMALIZE = False
OPTIONS = (
    Option("taylor_batches", "int", 32, "mini-batches of training data the scores average over"),
    Option("taylor_batch_size", "int", 64, "images per mini-batch"),
)


def _has_bn(graph: PruneGraph, index: int) -> bool:
    return any(isinstance(dep.target.module, nn.modules.batchnorm._BatchNorm) for dep, _ in graph.groups[index].tp_group)


def scores(graph: PruneGraph, ctx: PruneContext) -> list[np.ndarray]:
    opts = ctx.settings(METHOD, OPTIONS)
    ds = ctx.require_data(METHOD)
    kw = dict(batches=opts["taylor_batches"], batch_size=opts["taylor_batch_size"], seed=ctx.seed,
              progress=ctx.progress)
    out = taylor_scores(graph, ds, bn_only=True, **kw)
    if not all(_has_bn(graph, i) for i in range(len(graph.groups))):
        full = taylor_scores(graph, ds, **kw)
        out = [s if _has_bn(graph, i) else f for i, (s, f) in enumerate(zip(out, full))]
    return out


IMPORTANCES = {METHOD: Importance(METHOD, scores, NORMALIZE, True,
                                  "HALP's first-order Taylor on each group's BN parameters (loss-aware, comparable "
                                  "across layers)")}


def prune(model: nn.Module, ctx: PruneContext) -> PruneResult:
    ctx.settings(METHOD, OPTIONS)
    ctx.require_data(METHOD)
    return prune_with_scores(model, ctx, METHOD, scores, NORMALIZE)
