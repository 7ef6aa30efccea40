"""Data-free baselines: L1/L2 filter magnitude and random selection.

L1 is Li et al., ICLR 2017 ("Pruning Filters for Efficient ConvNets"): a filter's score is
s_j = sum |F_j|, the L1 norm of its kernel weights. Generalised to coupled groups, the score
of channel c is the mean over the group's layers of the p-norm of the slice channel c owns
(each out-conv's filter, the BN scale/shift, each consumer's in-channel slice) — exactly
Torch-Pruning's GroupMagnitudeImportance(p, group_reduction="mean"), used here without its
normalisation because ``select`` normalises per group. Random draws uniform scores (seeded).
"""
from __future__ import annotations

import numpy as np
import torch_pruning as tp
from torch import nn

from edgeprune.prune.base import PruneContext, PruneResult, prune_with_scores
from edgeprune.prune.graph import PruneGraph
from edgeprune.prune.importance import Importance

ALLOCATIONS = ("global", "uniform")  # prune_with_scores spreads a ratio either way
NORMALIZE = True
OPTIONS: tuple = ()  # l1, l2 and random take no method options (random uses the run's seed)


def magnitude_scores(graph: PruneGraph, p: int = 1) -> list[np.ndarray]:
    """Per-channel group p-norm scores for every group of ``graph``."""
    scorer = tp.importance.GroupMagnitudeImportance(p=p, group_reduction="mean", normalizer=None)
    return [scorer(g.tp_group).detach().cpu().numpy() for g in graph.groups]


def random_scores(graph: PruneGraph, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random(g.channels) for g in graph.groups]


IMPORTANCES = {
    "l1": Importance("l1", lambda graph, ctx: magnitude_scores(graph, p=1), NORMALIZE, False,
                     "L1 norm of each channel's weights (Li et al. 2017)"),
    "l2": Importance("l2", lambda graph, ctx: magnitude_scores(graph, p=2), NORMALIZE, False,
                     "L2 norm of each channel's weights"),
    "random": Importance("random", lambda graph, ctx: random_scores(graph, ctx.seed), NORMALIZE, False,
                         "uniform random scores (seeded)"),
}


def scores(graph: PruneGraph, ctx: PruneContext) -> list[np.ndarray]:
    return IMPORTANCES[ctx.option("method", "l1")].scores(graph, ctx)


def prune(model: nn.Module, ctx: PruneContext) -> PruneResult:
    return prune_with_scores(model, ctx, ctx.option("method", "l1"), scores, NORMALIZE)
