"""Checkpoints that reload without pickle, including pruned models.

Invariants:
- A checkpoint is one ``torch.save``d dict of plain values and tensors::

      {"format": "edgeprune-checkpoint/1", "spec": model_spec(...),
       "layers": {module_name: {"type": "Conv2d" | "BatchNorm2d" | "Linear", shape attrs...}},
       "state_dict": model.state_dict(), "meta": {...}}

  so ``torch.load(weights_only=True)`` reads it; full unpickling happens only with
  ``trust=True`` (the user's explicit opt-in).
- It is written to a temporary file in the same folder and renamed into place: a reader
  sees the old file or the whole new one, never half of one.
- ``load_checkpoint`` rebuilds the architecture from ``spec``, replaces every Conv2d,
  BatchNorm2d and Linear whose recorded shape differs (a pruned model) by a layer of the
  recorded shape, then loads the weights with ``strict=True``: the result computes exactly
  what the saved model computed.
- A spec naming user code (``package.module:factory``) is imported only when the user named
  that same factory (``allow_factory``): a checkpoint cannot choose code to run.
- Every unreadable, foreign or mismatching file is a ``UserInputError`` naming the file.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from edgeprune.errors import UserInputError
from edgeprune.models import build_from_spec, is_user_ref
from edgeprune.outputs import shared_mode

FORMAT = "edgeprune-checkpoint/1"
_FORMAT_FAMILY = "edgeprune-checkpoint/"
_PICKLE_HINT = ("re-save it as a plain state_dict, or pass --trust-checkpoint if you trust the file: "
                "loading it can run code")


# ---- layer records: the shape of every Conv2d / BatchNorm2d / Linear ----

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


def reshape_to_records(model: nn.Module, records: Mapping[str, Mapping[str, Any]], source: str) -> int:
    """Give every recorded layer of ``model`` its recorded shape; returns how many were replaced."""
    replaced = 0
    for name, rec in records.items():
        try:
            current = model.get_submodule(name)
        except AttributeError:
            raise UserInputError(f"{source}: layer '{name}' is not in the model its spec builds",
                                 "the checkpoint does not match this version of the model code") from None
        now = layer_record(current)
        if now is None or now["type"] != rec.get("type"):
            raise UserInputError(f"{source}: layer '{name}' is a {type(current).__name__} in the model "
                                 f"but a {rec.get('type')} in the checkpoint")
        if now == dict(rec):
            continue
        try:
            new = _module_from_record(rec)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise UserInputError(f"{source}: bad record for layer '{name}': {exc}") from None
        _replace(model, name, new.train(current.training))
        replaced += 1
    return replaced


# ---- saving ----

def _plain(value: Any, where: str) -> Any:
    """``value`` as types ``weights_only`` loading accepts (numpy scalars and paths converted)."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if getattr(value, "shape", None) == () and hasattr(value, "item"):
        return value.item()
    raise TypeError(f"checkpoint {where} holds a {type(value).__name__}; only plain values can be saved")


def _cpu_state_dict(model: nn.Module) -> OrderedDict:
    sd = model.state_dict()
    out = OrderedDict((k, v.detach().cpu()) for k, v in sd.items())
    if hasattr(sd, "_metadata"):
        out._metadata = sd._metadata  # per-module versions, as torch's own state_dicts carry
    return out


def save_checkpoint(path: str | os.PathLike, model: nn.Module, spec: dict[str, Any],
                    meta: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (possibly pruned) with the ``spec`` that rebuilds it, atomically, with the umask's mode."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise TypeError("spec must be a dict from edgeprune.models.model_spec")
    json.dumps(spec)  # a spec must stay JSON-able (it is also written into reports)
    payload = {"format": FORMAT, "spec": spec, "layers": layer_records(model),
               "state_dict": _cpu_state_dict(model), "meta": _plain(meta or {}, "meta")}
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, shared_mode())  # mkstemp makes it 0600; checkpoints are shared like any result
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ---- loading ----

def read_file(path: str | os.PathLike, trust: bool = False) -> Any:
    """``torch.load`` of ``path`` on CPU; pickled objects only with ``trust``. One-line errors."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"checkpoint not found: {path}", "check the path")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as exc:  # torch raises many types for foreign/corrupt files; all mean "unreadable"
        if not trust and "weights only load failed" in str(exc).lower() and "invalid load key" not in str(exc):
            raise UserInputError(f"{path} holds pickled Python objects, refused for safety", _PICKLE_HINT) from None
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:100]
        raise UserInputError(f"cannot read {path}: not a PyTorch checkpoint or corrupt ({first})",
                             "pass a file written by torch.save or 'edgeprune train'") from None


def _spec_of(obj: Any, path: Path) -> dict[str, Any]:
    if not isinstance(obj, Mapping) or not str(obj.get("format", "")).startswith(_FORMAT_FAMILY):
        raise UserInputError(f"{path} is not an edgeprune checkpoint",
                             "to load a plain state_dict, pass --model NAME together with --weights")
    if obj["format"] != FORMAT:
        raise UserInputError(f"{path} has format {obj['format']!r}; this edgeprune reads {FORMAT!r}",
                             "upgrade edgeprune")
    spec = obj.get("spec")
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise UserInputError(f"{path} has no model spec", "the file is damaged or was not written by edgeprune")
    for key in ("layers", "state_dict"):
        if not isinstance(obj.get(key), Mapping):
            raise UserInputError(f"{path} lacks its {key!r} entry", "the file is damaged")
    return dict(spec)


def load_checkpoint(path: str | os.PathLike, allow_factory: str | None = None,
                    trust: bool = False) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """(model in eval mode with the saved shapes and weights, spec, meta) from ``save_checkpoint``'s file."""
    path = Path(path)
    obj = read_file(path, trust)
    spec = _spec_of(obj, path)
    name = spec["name"]
    if is_user_ref(name) and name != allow_factory:
        raise UserInputError(f"{path} was made from user code {name}, which is imported only on request",
                             f"pass --model {name} if you trust that code")
    model = build_from_spec(spec)
    reshape_to_records(model, obj["layers"], str(path))
    state = obj["state_dict"]
    check_state_dict(model, state, path)
    model.load_state_dict(state, strict=True)
    meta = obj.get("meta")
    return model.eval(), spec, dict(meta) if isinstance(meta, Mapping) else {}


def _extract_state_dict(obj: Any, path: Path) -> Mapping[str, Any]:
    """The state_dict inside what ``torch.load`` returned (plain, wrapped, checkpoint or module)."""
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, Mapping):
        if str(obj.get("format", "")).startswith(_FORMAT_FAMILY):
            obj = obj.get("state_dict")
        else:
            for key in ("state_dict", "model"):
                inner = obj.get(key)
                if isinstance(inner, nn.Module):
                    return inner.state_dict()
                if isinstance(inner, Mapping):
                    obj = inner
                    break
        if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise UserInputError(f"no state_dict found in {path}",
                         "expected a state_dict, or a dict holding one under 'state_dict' or 'model'")


def _strip_prefix(state: Mapping[str, Any], model_keys: set[str], prefix: str = "module.") -> Mapping[str, Any]:
    """Drop a DataParallel ``module.`` prefix when every key has it and the model's keys do not."""
    if state and all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in model_keys):
        return OrderedDict((k[len(prefix):], v) for k, v in state.items())
    return state


def check_state_dict(model: nn.Module, state: Mapping[str, Any], path: Path) -> None:
    """Raise ``UserInputError`` naming the first missing, unexpected or mis-shaped key."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        raise UserInputError(f"{path} lacks {len(missing)} of the model's weights, first '{missing[0]}'",
                             "is it a checkpoint for this --model?")
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise UserInputError(f"{path} has {len(unexpected)} weights the model lacks, first '{unexpected[0]}'",
                             "is it a checkpoint for this --model?")
    for key, want in expected.items():
        got = state[key]
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(want.shape):
            shape = list(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise UserInputError(f"{path}: '{key}' has shape {shape} but the model expects {list(want.shape)}",
                                 "check --model and the data's classes and channels")


def load_weights(model: nn.Module, path: str | os.PathLike, trust: bool = False) -> nn.Module:
    """Load a torchvision-style state_dict file into ``model`` (strict: same keys and shapes)."""
    path = Path(path)
    state = _extract_state_dict(read_file(path, trust), path)
    state = _strip_prefix(state, set(model.state_dict()))
    check_state_dict(model, state, path)
    model.load_state_dict(state, strict=True)
    return model
