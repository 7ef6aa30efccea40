"""Layer records: the constructor shape of every Conv2d / BatchNorm2d / Linear of a model.

Invariant: ``layer_record`` describes exactly the arguments that rebuild a layer of the same
shape; ``reshape_to_records`` gives a freshly built model the recorded shapes (a pruned
model) and, given the saved tensors, first checks that every record is well formed, bounded
and agrees with the tensors saved for it, so a record cannot allocate more than the file holds.
Every bad record is a ``UserInputError`` naming the file and the layer.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from edgeprune.errors import UserInputError

def layer_record(module: nn.Module) -> dict[str, Any] | None:
    """The constructor arguments of a Conv2d/BatchNorm2d/Linear (exact types only), else None."""
    kind = type(module)
    if kind is nn.Conv2d:
        return {"type": "Conv2d", "in_channels": module.in_channels, "out_channels": module.out_channels,
                "kernel_size": tuple(module.kernel_size), "stride": tuple(module.stride),
                "padding": module.padding if isinstance(module.padding, str) else tuple(module.padding),
                "dilation": tuple(module.dilation), "groups": module.groups, "bias": module.bias is not None,
                "padding_mode": module.padding_mode}
    if kind is nn.BatchNorm2d:
        return {"type": "BatchNorm2d", "num_features": module.num_features, "eps": module.eps,
                "momentum": module.momentum, "affine": module.affine,
                "track_running_stats": module.track_running_stats}
    if kind is nn.Linear:
        return {"type": "Linear", "in_features": module.in_features, "out_features": module.out_features,
                "bias": module.bias is not None}
    return None


def layer_records(model: nn.Module) -> dict[str, dict[str, Any]]:
    return {name: rec for name, mod in model.named_modules() if (rec := layer_record(mod)) is not None}


def _module_from_record(rec: Mapping[str, Any]) -> nn.Module:
    """A new layer of the recorded shape; its values are left uninitialised (weights load next)."""
    kind = rec.get("type")
    if kind == "Conv2d":
        padding = rec["padding"] if isinstance(rec["padding"], str) else tuple(rec["padding"])
        return torch.nn.utils.skip_init(
            nn.Conv2d, int(rec["in_channels"]), int(rec["out_channels"]), tuple(rec["kernel_size"]),
            stride=tuple(rec["stride"]), padding=padding,
            dilation=tuple(rec["dilation"]), groups=int(rec["groups"]), bias=bool(rec["bias"]),
            padding_mode=str(rec["padding_mode"]))
    if kind == "BatchNorm2d":
        return torch.nn.utils.skip_init(
            nn.BatchNorm2d, int(rec["num_features"]), eps=float(rec["eps"]), momentum=rec["momentum"],
            affine=bool(rec["affine"]), track_running_stats=bool(rec["track_running_stats"]))
    if kind == "Linear":
        return torch.nn.utils.skip_init(nn.Linear, int(rec["in_features"]), int(rec["out_features"]),
                                        bias=bool(rec["bias"]))
    raise ValueError(f"unknown layer type {kind!r}")


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


_MAX_SIZE = 1 << 24  # any one channel count or kernel side in a record


def _size(rec: Mapping[str, Any], key: str) -> int:
    value = rec[key]
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_SIZE:
        raise ValueError(f"{key} must be an integer from 1 to {_MAX_SIZE}, got {str(value)[:40]}")
    return value


def record_shapes(rec: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The state_dict entries (name suffix -> shape) a layer built from ``rec`` holds; ValueError if malformed."""
    kind = rec.get("type")
    if kind == "Conv2d":
        cin, cout, groups = _size(rec, "in_channels"), _size(rec, "out_channels"), _size(rec, "groups")
        kernel = rec["kernel_size"]
        if cin % groups or cout % groups or not isinstance(kernel, (list, tuple)) or len(kernel) != 2:
            raise ValueError("channels must divide by groups and kernel_size must be two sides")
        shapes = {"weight": (cout, cin // groups, *(_size({"k": k}, "k") for k in kernel))}
        return {**shapes, "bias": (cout,)} if rec["bias"] else shapes
    if kind == "BatchNorm2d":
        n = _size(rec, "num_features")
        keys = (("weight", "bias") if rec["affine"] else ()) + (
            ("running_mean", "running_var") if rec["track_running_stats"] else ())
        return {k: (n,) for k in keys}
    if kind == "Linear":
        cin, cout = _size(rec, "in_features"), _size(rec, "out_features")
        return {"weight": (cout, cin), "bias": (cout,)} if rec["bias"] else {"weight": (cout, cin)}
    raise ValueError(f"unknown layer type {str(kind)[:40]!r}")


def _check_record(name: str, rec: Any, state: Mapping[str, Any], source: str) -> None:
    """A record must be well formed and agree with the tensors saved for it, so it allocates nothing unbounded."""
    try:
        if not isinstance(rec, Mapping):
            raise ValueError(f"it is a {type(rec).__name__}, not a table")
        shapes = record_shapes(rec)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserInputError(f"{source}: bad record for layer '{name}': {exc}", "the file is damaged") from None
    for suffix, shape in shapes.items():
        saved = state.get(f"{name}.{suffix}")
        if not isinstance(saved, torch.Tensor) or tuple(saved.shape) != shape:
            got = list(saved.shape) if isinstance(saved, torch.Tensor) else "nothing"
            raise UserInputError(f"{source}: layer '{name}' is recorded with {suffix} {list(shape)} but the file "
                                 f"holds {got}", "the file is damaged")


def reshape_to_records(model: nn.Module, records: Mapping[str, Any], source: str,
                       state: Mapping[str, Any] | None = None) -> int:
    """Give every recorded layer of ``model`` its recorded shape; returns how many were replaced.

    With ``state`` (the saved tensors), every record that changes a layer is first checked against them.
    """
    replaced = 0
    for name, rec in records.items():
        try:
            current = model.get_submodule(name) if isinstance(name, str) else None
        except AttributeError:
            current = None
        if current is None:
            raise UserInputError(f"{source}: layer '{str(name)[:80]}' is not in the model its spec builds",
                                 "the checkpoint does not match this version of the model code")
        now = layer_record(current)
        kind = rec.get("type") if isinstance(rec, Mapping) else type(rec).__name__
        if now is None or now["type"] != kind:
            raise UserInputError(f"{source}: layer '{name}' is a {type(current).__name__} in the model "
                                 f"but a {str(kind)[:40]} in the checkpoint")
        if now == dict(rec):
            continue
        if state is not None:
            _check_record(name, rec, state, source)
        try:
            new = _module_from_record(rec)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise UserInputError(f"{source}: bad record for layer '{name}': {exc}") from None
        _replace(model, name, new.train(current.training))
        replaced += 1
    return replaced
