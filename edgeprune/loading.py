"""Resolve what the CLI names — a model, its weights, a dataset, an output folder — or fail clearly.

Invariant: every function here either returns a usable object or raises ``UserInputError``
with one line naming the bad value and what to do; nothing is written to disk. The output checks
(``check_out_dir``, ``check_output_file``) live in ``edgeprune.outputs`` and are re-exported here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeprune.errors import UserInputError
from edgeprune.outputs import check_out_dir, check_output_file  # noqa: F401  (re-exported: the CLI's checks)


def check_ratio(ratio: float) -> float:
    if not 0.0 < ratio < 1.0:
        raise UserInputError(f"--ratio must be between 0 and 1 (exclusive), got {ratio}",
                             "e.g. --ratio 0.5 removes half of the prunable channels")
    return ratio


def is_checkpoint(path: Path) -> bool:
    """True for an edgeprune checkpoint (architecture spec + state_dict); False for a plain state_dict."""
    from edgeprune.models.checkpoint import is_checkpoint_obj

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # corrupt or pickled objects: load_model/load_checkpoint report it precisely
        return False
    return is_checkpoint_obj(obj)


def load_model(name: str | None, weights: str | None, *, num_classes: int, in_channels: int,
               trust: bool = False, data: str = "the data set") -> tuple[nn.Module, dict[str, Any]]:
    """The model to prune: an edgeprune checkpoint, or ``name`` built from the zoo plus ``weights``.

    ``num_classes``/``in_channels`` are the data's (``data`` names it in messages): a checkpoint
    whose spec disagrees, or a state_dict whose first conv or classifier disagrees, is refused
    before anything is built. ``weights`` is read once; an unreadable file says why.
    Returns (model in eval mode, spec) where spec rebuilds the architecture.
    """
    from edgeprune.models import build_model, model_spec
    from edgeprune.models.checkpoint import (check_fits_data, checkpoint_spec, is_checkpoint_obj,
                                             load_weights_from, model_from_checkpoint, read_file)

    obj = wpath = None
    if weights is not None:
        wpath = Path(weights)
        if not wpath.is_file():
            raise UserInputError(f"weights file not found: {wpath}", "pass the checkpoint written by 'edgeprune train'")
        obj = read_file(wpath, trust)
        if is_checkpoint_obj(obj):
            spec = checkpoint_spec(obj, wpath)
            if name and ":" not in name and spec["name"] != name:
                raise UserInputError(f"--model {name} but {wpath} holds a {spec['name']}",
                                     "drop --model or pass the matching one")
            check_fits_data(spec, wpath, num_classes, in_channels, data)
            allow = name if name and ":" in name else None
            model, spec, _meta = model_from_checkpoint(obj, wpath, allow_factory=allow)
            return model.eval(), spec
    if not name:
        if wpath is not None:
            raise UserInputError(f"no model given: {wpath} holds weights without the architecture",
                                 "pass --model NAME too (see 'edgeprune models')")
        raise UserInputError("no model given", "pass --model NAME (see 'edgeprune models') or --weights CHECKPOINT")
    model = build_model(name, num_classes=num_classes, in_channels=in_channels)
    spec = model_spec(name, num_classes=num_classes, in_channels=in_channels)
    if obj is not None:
        load_weights_from(model, obj, wpath)
    return model.eval(), spec


def count_flops_params(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(multiply-accumulates, parameters) of one forward pass at ``input_shape``."""
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(model, torch.zeros(*input_shape))
    return int(macs), int(params)
