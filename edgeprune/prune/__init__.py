"""Channel pruning: one file per method over one shared graph (``graph``) and selection (``select``).

``prune(model, example_inputs, method="l1", ratio=0.5, round_to=None)`` returns a physically
smaller copy of ``model``. ``METHODS`` maps each method name to its module; every module
exposes ``prune(model, ctx) -> PruneResult`` (see ``base``). Modules are imported on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from edgeprune.errors import UserInputError
from edgeprune.prune.base import PruneContext, PruneResult

METHODS: dict[str, str] = {
    "l1": "edgeprune.prune.magnitude",
    "l2": "edgeprune.prune.magnitude",
    "random": "edgeprune.prune.magnitude",
    "gate": "edgeprune.prune.gate",
    "slim": "edgeprune.prune.slimming",
    "taylor": "edgeprune.prune.taylor",
    "thinet": "edgeprune.prune.thinet",
}


def method_module(method: str):
    if method not in METHODS:
        raise UserInputError(f"unknown pruning method {method!r}", f"choose one of: {', '.join(METHODS)}")
    return importlib.import_module(METHODS[method])


def prune_model(model: nn.Module, example_inputs: torch.Tensor, method: str = "l1", ratio: float = 0.5,
                round_to: int | None = None, *, train_ds: Any = None, progress: bool = True,
                min_ratio: float = 0.1, ignored_layers: tuple[str, ...] = (), seed: int = 0,
                flops_target: float | None = None, **options: Any) -> PruneResult:
    """Prune a copy of ``model`` with ``method``; method-specific knobs go in ``options``."""
    ctx = PruneContext(example_inputs=example_inputs, ratio=ratio, round_to=round_to, min_ratio=min_ratio,
                       ignored_layers=tuple(ignored_layers), train_ds=train_ds, flops_target=flops_target,
                       progress=progress, seed=seed, options={"method": method, **options})
    return method_module(method).prune(model, ctx)


def prune(model: nn.Module, example_inputs: torch.Tensor, method: str = "l1", ratio: float = 0.5,
          round_to: int | None = None, **kwargs: Any) -> nn.Module:
    """Return a physically smaller copy of ``model`` (see ``prune_model``)."""
    return prune_model(model, example_inputs, method, ratio, round_to, **kwargs).model
