"""Channel importance: a small registry, one entry per scoring criterion.

An ``Importance`` turns a prune graph (and the run's context: data, seed, options) into one
score per channel of every group, higher = keep. It says whether its scores are comparable
across groups as they are (``normalize=False``: BN scales after sparsity training, Taylor
estimates of the loss change) or must be divided by each group's mean first, and whether it
needs training data. Each method module declares its criteria in ``IMPORTANCES``; ``get(name)``
imports the module that owns ``name`` (the method registry ``edgeprune.prune.METHODS``) and
returns its entry, so nothing outside a method's module branches on the method's name.
Torch-Pruning's ``Importance`` classes are the model: a callable per criterion.

Invariant: ``get`` raises ``UserInputError`` (one line, naming the choices) for an unknown name
or a method that has no per-channel scores.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from edgeprune.errors import UserInputError


@dataclass(frozen=True)
class Importance:
    name: str
    scores: Callable[[Any, Any], list[np.ndarray]]  # (PruneGraph, PruneContext) -> per-group scores
    normalize: bool = True
    needs_data: bool = False
    summary: str = ""


def get(name: str) -> Importance:
    from edgeprune.prune import METHODS

    if not isinstance(name, str) or name not in METHODS:
        raise UserInputError(f"unknown channel importance {name!r}", f"choose one of: {', '.join(METHODS)}")
    table = getattr(importlib.import_module(METHODS[name]), "IMPORTANCES", {})
    if name not in table:
        scored = [m for m in METHODS if m in getattr(importlib.import_module(METHODS[m]), "IMPORTANCES", {})]
        raise UserInputError(f"method {name} has no per-channel scores for the latency-budget search",
                             f"use --ratio with this method, or one of: {', '.join(scored)}")
    return table[name]
