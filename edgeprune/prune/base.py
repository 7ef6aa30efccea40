"""What every pruning method shares: its inputs (``PruneContext``), its output (``PruneResult``),
and the score -> selection -> physical removal path (``prune_with_scores``).

A method module exposes ``prune(model, ctx) -> PruneResult`` (the whole algorithm, which may
train, insert gates or reconstruct weights) and, where it ranks channels, ``scores(graph, ctx)
-> list[np.ndarray]`` (one score per channel of each group, higher = keep; used by the
latency-budget search). ``NORMALIZE`` says whether scores are comparable across groups as they
are (False, e.g. BN scales after sparsity training) or must be normalised per group first.

Invariant: ``prune`` never modifies the model it is given (it works on a deep copy) and
returns a model with the same input/output shapes in which every group keeps >= 1 channel.
"""
from __future__ import annotations

import copy
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from edgeprune.errors import UserInputError
from edgeprune.prune import select
from edgeprune.prune.graph import PruneGraph
from edgeprune.prune.options import Option, resolve


@dataclass
class PruneContext:
    """Inputs shared by all methods. ``ratio`` is the share of prunable channels to remove."""

    example_inputs: torch.Tensor
    ratio: float = 0.5
    round_to: int | None = None
    min_ratio: float = 0.1
    ignored_layers: tuple[str, ...] = ()
    train_ds: Any = None          # a torch Dataset, for data-driven methods
    flops_target: float | None = None  # keep at most this share of the MACs (methods that iterate)
    progress: bool = True
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)  # method-specific knobs
    allocation: str = "global"    # how a ratio is spread over groups: global ranking or the same share each

    def option(self, key: str, default: Any) -> Any:
        return self.options.get(key, default)

    def settings(self, method: str, specs: tuple[Option, ...]) -> dict[str, Any]:
        """Every option ``specs`` declares, checked, with its default where not given (see ``options``)."""
        return resolve(method, specs, {k: v for k, v in self.options.items() if k != "method"})

    def require_data(self, method: str) -> Any:
        if self.train_ds is None:
            raise UserInputError(f"method {method!r} needs training data", "pass --data")
        return self.train_ds


@dataclass
class PruneResult:
    """A pruned model and what happened to each group."""

    model: nn.Module
    method: str
    ratio: float
    round_to: int | None
    groups: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        before = sum(g["before"] for g in self.groups)
        after = sum(g["after"] for g in self.groups)
        return {"method": self.method, "ratio": self.ratio, "round_to": self.round_to,
                "channels_before": before, "channels_after": after, "groups": self.groups, **self.extra}


ALLOCATIONS = ("global", "uniform")


def check_context(ctx: PruneContext) -> None:
    """Raise ``UserInputError`` for a ratio, multiple, minimum width or allocation out of range."""
    if ctx.allocation not in ALLOCATIONS:
        raise UserInputError(f"unknown allocation {ctx.allocation!r}", f"choose one of: {', '.join(ALLOCATIONS)}")
    if isinstance(ctx.ratio, bool) or not isinstance(ctx.ratio, numbers.Real) or not 0.0 < ctx.ratio < 1.0:
        raise UserInputError(f"pruning ratio must be a number in (0, 1), got {ctx.ratio!r}", "pass e.g. ratio=0.5")
    if ctx.round_to is not None and (isinstance(ctx.round_to, bool) or not isinstance(ctx.round_to, numbers.Integral)
                                     or ctx.round_to < 1):
        raise UserInputError(f"round_to must be a positive whole channel multiple, got {ctx.round_to!r}",
                             "pass e.g. round_to=8, or None to keep any count")
    if isinstance(ctx.min_ratio, bool) or not isinstance(ctx.min_ratio, numbers.Real) or not 0.0 <= ctx.min_ratio < 1.0:
        raise UserInputError(f"minimum width must be a share in [0, 1), got {ctx.min_ratio!r}",
                             "pass e.g. --min-width 0.1 (min_ratio=0.1)")


def multiples(graph: PruneGraph, round_to: int | None) -> list[int]:
    """Per group: the multiple its kept count must have (``round_to`` combined with its slices)."""
    return [select.combined_multiple(round_to, g.slices) for g in graph.groups]


def floors(graph: PruneGraph, round_to: int | None, min_ratio: float) -> list[int]:
    """Per group: the fewest channels it may keep."""
    return [select.min_keep(g.channels, m, min_ratio) for g, m in zip(graph.groups, multiples(graph, round_to))]


def keep_lists(graph: PruneGraph, scores: list[np.ndarray], counts: list[int]) -> dict[int, list[int]]:
    """Per group, the ``counts[i]`` highest-scoring channels, spread evenly over the group's slices."""
    return {g.index: select.keep_indices(s, n, g.slices, g.aligned) for g, s, n in zip(graph.groups, scores, counts)}


def apply_counts(graph: PruneGraph, scores: list[np.ndarray], counts: list[int]) -> list[dict[str, Any]]:
    """Keep the ``counts[i]`` highest-scoring channels of group i; remove the rest physically."""
    graph.apply(keep_lists(graph, scores, counts))
    return [{"group": g.root_name, "before": g.channels, "after": n, "members": len(g.members)}
            for g, n in zip(graph.groups, counts)]


def no_groups_error() -> UserInputError:
    return UserInputError("this model has no prunable channel groups",
                          "keep fewer layers whole (--keep), or check that its convolutions feed other layers")


def prune_with_scores(model: nn.Module, ctx: PruneContext, method: str,
                      scores_fn: Callable[[PruneGraph, PruneContext], list[np.ndarray]],
                      normalize: bool = True) -> PruneResult:
    """Copy ``model``, score its groups, select globally by ``ctx.ratio``, remove physically."""
    check_context(ctx)
    pruned = copy.deepcopy(model).eval()
    graph = PruneGraph(pruned, ctx.example_inputs, ctx.ignored_layers)
    if not graph.groups:
        raise no_groups_error()
    scores = scores_fn(graph, ctx)
    if ctx.allocation == "uniform":
        counts = select.uniform_counts([g.channels for g in graph.groups], ctx.ratio, ctx.round_to, ctx.min_ratio,
                                       multiples=multiples(graph, ctx.round_to))
    else:
        counts = select.global_counts(scores, ctx.ratio, ctx.round_to, ctx.min_ratio, normalize=normalize,
                                      multiples=multiples(graph, ctx.round_to))
    records = apply_counts(graph, scores, counts)
    return PruneResult(pruned, method, ctx.ratio, ctx.round_to, records)
