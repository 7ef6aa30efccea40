"""Channel pruning: one file per method over one shared graph (``graph``) and selection (``select``).

``prune_channels(model, example_inputs, method="l1", ratio=0.5, round_to=None)`` returns a
physically smaller copy of ``model`` (also ``edgeprune.prune_channels``); ``prune_model`` returns
the ``PruneResult`` with what happened to each group. ``METHODS`` maps each method name to its
module; every module exposes ``prune(model, ctx) -> PruneResult`` (see ``base``) and declares its
knobs in ``OPTIONS`` (see ``options``). Modules are imported on first use.

Invariant: a call with inputs of the wrong kind (a model name instead of a module, a string
ratio, a meta tensor, an unknown method, keyword or option) raises ``UserInputError`` with one
line saying what to pass, before any work is done.
"""
from __future__ import annotations

import importlib
from typing import Any, Sequence

import torch
from torch import nn

from edgeprune.errors import UserInputError
from edgeprune.prune.base import PruneContext, PruneResult, check_context
from edgeprune.prune.options import resolve, unknown_error

METHODS: dict[str, str] = {
    "l1": "edgeprune.prune.magnitude",
    "l2": "edgeprune.prune.magnitude",
    "random": "edgeprune.prune.magnitude",
    "gate": "edgeprune.prune.gate",
    "slim": "edgeprune.prune.slimming",
    "taylor": "edgeprune.prune.taylor",
    "taylor_bn": "edgeprune.prune.taylor_bn",
    "thinet": "edgeprune.prune.thinet",
}
# prune_model's own keywords: a misspelling of one of these is hinted as such
KEYWORDS = ("round_to", "train_ds", "progress", "min_ratio", "ignored_layers", "seed", "flops_target", "allocation")


def method_module(method: str):
    if not isinstance(method, str) or method not in METHODS:
        raise UserInputError(f"unknown pruning method {method!r}", f"choose one of: {', '.join(METHODS)}")
    return importlib.import_module(METHODS[method])


def check_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` checked against ``method``'s declared ``OPTIONS``; every option with its value."""
    specs = getattr(method_module(method), "OPTIONS", ())
    names = {o.name for o in specs}
    for name in options:
        if name not in names:
            raise unknown_error(method, str(name), names, KEYWORDS)
    return resolve(method, specs, options)


def check_inputs(model: Any, example_inputs: Any) -> None:
    """A module and a real (not meta) floating-point tensor, or a one-line ``UserInputError``."""
    if not isinstance(model, nn.Module):
        raise UserInputError(f"model must be a torch.nn.Module, got {type(model).__name__} {model!r:.40}",
                             "build one first, e.g. edgeprune.models.build_model('resnet20')")
    if not isinstance(example_inputs, torch.Tensor):
        raise UserInputError(f"example_inputs must be a torch.Tensor, got {type(example_inputs).__name__}",
                             "pass one input batch, e.g. torch.zeros(1, 3, 32, 32)")
    if example_inputs.is_meta or not example_inputs.is_floating_point() or example_inputs.dim() < 2:
        raise UserInputError(f"example_inputs must be a real floating-point batch, got a {example_inputs.dtype} "
                             f"tensor of shape {list(example_inputs.shape)} on {example_inputs.device}",
                             "pass e.g. torch.zeros(1, 3, 32, 32)")


def _layer_names(ignored_layers: Any) -> tuple[str, ...]:
    names = (ignored_layers,) if isinstance(ignored_layers, str) else ignored_layers
    try:
        names = tuple(names)
    except TypeError:
        names = (names,)
    if not all(isinstance(n, str) for n in names):
        raise UserInputError(f"ignored_layers must be layer names (strings), got {ignored_layers!r}",
                             "pass e.g. ignored_layers=('layer1', 'conv1')")
    return names


def prune_model(model: nn.Module, example_inputs: torch.Tensor, method: str = "l1", ratio: float = 0.5,
                round_to: int | None = None, *, train_ds: Any = None, progress: bool = True,
                min_ratio: float = 0.1, ignored_layers: Sequence[str] = (), seed: int = 0,
                flops_target: float | None = None, allocation: str = "global", **options: Any) -> PruneResult:
    """Prune a copy of ``model`` with ``method``; method-specific knobs go in ``options``.

    ``ignored_layers``: module names kept whole (a container's name keeps every layer under it);
    ``min_ratio``: the share of its width every group keeps at least, in [0, 1);
    ``allocation``: ``global`` (channels ranked across groups) or ``uniform`` (every group loses
    ``ratio`` of its channels, on the multiple) — uniform only for methods that select by score once
    (``ALLOCATIONS`` in the method's module).
    """
    check_inputs(model, example_inputs)
    module = method_module(method)
    ctx = PruneContext(example_inputs=example_inputs, ratio=ratio, round_to=round_to, min_ratio=min_ratio,
                       ignored_layers=_layer_names(ignored_layers), train_ds=train_ds, flops_target=flops_target,
                       progress=progress, seed=seed, options={"method": method, **options}, allocation=allocation)
    check_context(ctx)
    if allocation not in getattr(module, "ALLOCATIONS", ("global",)):
        raise UserInputError(f"method {method} has its own allocation of channels over layers; "
                             f"--allocation {allocation} does not apply to it",
                             "use --allocation uniform with l1, l2, random, taylor or taylor_bn")
    check_options(method, options)
    return module.prune(model, ctx)


def prune_channels(model: nn.Module, example_inputs: torch.Tensor, method: str = "l1", ratio: float = 0.5,
                   round_to: int | None = None, **kwargs: Any) -> nn.Module:
    """Return a physically smaller copy of ``model`` (see ``prune_model`` for the keywords)."""
    return prune_model(model, example_inputs, method, ratio, round_to, **kwargs).model


prune = prune_channels  # the earlier name inside this package; the top-level API is ``prune_channels``
