"""Channel pruning: one scoring method per file, one shared graph and selection.

``prune(model, example_inputs, method="l1", ratio=0.5, round_to=None)`` returns a
physically smaller copy of ``model`` (the argument is not modified).

A method is a function ``scores(graph, **kwargs) -> list[np.ndarray]`` giving one
score per channel of each group (higher = more important), registered in ``METHODS``.
Invariant: the returned model has the same input/output shapes as the original, every
group keeps at least one channel, and kept counts follow ``select``'s rounding rules.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from edgeprune.errors import UserInputError
from edgeprune.prune import select
from edgeprune.prune.graph import PruneGraph
from edgeprune.prune.magnitude import magnitude_scores


def _random_scores(graph: PruneGraph, seed: int = 0) -> list[np.ndarray]:
    """Random baseline: uniform scores, seeded."""
    rng = np.random.default_rng(seed)
    return [rng.random(g.channels) for g in graph.groups]


METHODS: dict[str, Callable[..., list[np.ndarray]]] = {
    "l1": lambda graph, **kw: magnitude_scores(graph, p=1),
    "l2": lambda graph, **kw: magnitude_scores(graph, p=2),
    "random": lambda graph, seed=0, **kw: _random_scores(graph, seed),
}


@dataclass
class PruneResult:
    """A pruned model and what happened to each group."""

    model: nn.Module
    method: str
    ratio: float
    round_to: int | None
    groups: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        before = sum(g["before"] for g in self.groups)
        after = sum(g["after"] for g in self.groups)
        return {"method": self.method, "ratio": self.ratio, "round_to": self.round_to,
                "channels_before": before, "channels_after": after, "groups": self.groups}


def prune_model(model: nn.Module, example_inputs: torch.Tensor, method: str = "l1",
                ratio: float = 0.5, round_to: int | None = None, *, min_ratio: float = 0.1,
                ignored_layers: Sequence[str] = (), **method_kwargs) -> PruneResult:
    """Prune a copy of ``model`` with ``method`` and global selection; see module docstring."""
    if method not in METHODS:
        raise UserInputError(f"unknown pruning method {method!r}", f"choose one of: {', '.join(METHODS)}")
    if not 0.0 < ratio < 1.0:
        raise UserInputError(f"pruning ratio must be in (0, 1), got {ratio}")
    if round_to is not None and round_to < 1:
        raise UserInputError(f"round_to must be a positive channel multiple, got {round_to}")
    pruned = copy.deepcopy(model).eval()
    graph = PruneGraph(pruned, example_inputs, ignored_layers)
    if not graph.groups:
        raise UserInputError("this model has no prunable channel groups", "check --ignore")
    scores = METHODS[method](graph, **method_kwargs)
    counts = select.global_counts(scores, ratio, round_to, min_ratio)
    keep = {g.index: select.top_k(s, n) for g, s, n in zip(graph.groups, scores, counts)}
    graph.apply(keep)
    records = [{"group": g.root_name, "before": g.channels, "after": n, "members": len(g.members)}
               for g, n in zip(graph.groups, counts)]
    return PruneResult(pruned, method, ratio, round_to, records)


def prune(model: nn.Module, example_inputs: torch.Tensor, method: str = "l1", ratio: float = 0.5,
          round_to: int | None = None, **kwargs) -> nn.Module:
    """Return a physically smaller copy of ``model`` (see ``prune_model``)."""
    return prune_model(model, example_inputs, method, ratio, round_to, **kwargs).model
