"""Filter-magnitude baselines: L1 (Li et al., ICLR 2017, "Pruning Filters for Efficient ConvNets") and L2.

Score of channel c in group G: the mean over G's coupled layers of the p-norm of the weight
slice that channel c owns (the filter of each out-conv, the BN scale/shift, the in-channel
slice of each consumer), i.e. Li et al.'s s_j = sum |F_j| generalised to coupled groups.
Torch-Pruning's GroupMagnitudeImportance computes exactly that slice-norm reduction; this
file fixes its options (no normalisation here: ``select`` normalises per group).
"""
from __future__ import annotations

import numpy as np
import torch_pruning as tp

from edgeprune.prune.graph import PruneGraph


def magnitude_scores(graph: PruneGraph, p: int = 1) -> list[np.ndarray]:
    """Per-channel scores for every group of ``graph``."""
    scorer = tp.importance.GroupMagnitudeImportance(p=p, group_reduction="mean", normalizer=None)
    return [scorer(g.tp_group).detach().cpu().numpy() for g in graph.groups]
