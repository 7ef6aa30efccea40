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
- Every unreadable, foreign or mismatching file is a ``UserInputError`` naming the file and why
  (empty, truncated, not a torch file). The spec is checked field by field (types, bounded
  sizes) and every layer record against the tensors saved for it before anything is built,
  so a hostile file cannot make loading allocate more than the file itself holds.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from edgeprune.errors import UserInputError
from edgeprune.models import build_from_spec, check_spec, is_user_ref
from edgeprune.models.records import layer_records, reshape_to_records
from edgeprune.outputs import shared_mode

FORMAT = "edgeprune-checkpoint/1"
_FORMAT_FAMILY = "edgeprune-checkpoint/"
_PICKLE_HINT = ("re-save it as a plain state_dict, or pass --trust-checkpoint if you trust the file: "
                "loading it can run code")


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

_READ_HINT = "pass a file written by torch.save or 'edgeprune train'"


def _why_unreadable(path: Path, exc: Exception) -> str:
    """Why ``torch.load`` failed, in words: truncated archive, damaged pickle, or not a torch file at all."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:100]
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head.startswith(b"PK\x03\x04"):
        if not zipfile.is_zipfile(path):
            return "it is truncated (its zip archive has no end: an interrupted save, copy or download?)"
        return f"its archive is damaged ({first})"
    if head[:1] == b"\x80":
        return f"it is truncated or damaged ({first or 'ends early'})"
    return "it is not a PyTorch file (torch.save writes a zip archive)"


def read_file(path: str | os.PathLike, trust: bool = False) -> Any:
    """``torch.load`` of ``path`` on CPU; pickled objects only with ``trust``. One-line errors saying why."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"checkpoint not found: {path}", "check the path")
    if path.stat().st_size == 0:
        raise UserInputError(f"cannot read {path}: the file is empty", _READ_HINT)
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as exc:  # torch raises many types for foreign/corrupt files; all mean "unreadable"
        if not trust and "unsupported global" in str(exc).lower():  # a class or function, not just tensors
            raise UserInputError(f"{path} holds pickled Python objects, refused for safety", _PICKLE_HINT) from None
        raise UserInputError(f"cannot read {path}: {_why_unreadable(path, exc)}", _READ_HINT) from None


def is_checkpoint_obj(obj: Any) -> bool:
    """True for what ``read_file`` returns from an edgeprune checkpoint (any version of the format)."""
    return isinstance(obj, Mapping) and str(obj.get("format", "")).startswith(_FORMAT_FAMILY)


def checkpoint_spec(obj: Any, path: Path) -> dict[str, Any]:
    """The checkpoint's model spec, validated field by field (``check_spec``) before anything is built."""
    if not is_checkpoint_obj(obj):
        raise UserInputError(f"{path} is not an edgeprune checkpoint",
                             "to load a plain state_dict, pass --model NAME together with --weights")
    if obj["format"] != FORMAT:
        raise UserInputError(f"{path} has format {str(obj['format'])[:60]!r}; this edgeprune reads {FORMAT!r}",
                             "upgrade edgeprune")
    if "spec" not in obj:
        raise UserInputError(f"{path} has no model spec", "the file is damaged or was not written by edgeprune")
    for key in ("layers", "state_dict"):
        if not isinstance(obj.get(key), Mapping):
            raise UserInputError(f"{path} lacks its {key!r} entry", "the file is damaged")
    return check_spec(obj["spec"], str(path))


def check_fits_data(spec: Mapping[str, Any], path: Path, num_classes: int, in_channels: int,
                    data: str = "the data set") -> None:
    """The checkpoint's classes and input channels must be the data's: say which is which and what to do."""
    if spec["num_classes"] != num_classes:
        raise UserInputError(f"{path} is a {spec['name']} for {spec['num_classes']} classes but {data} has "
                             f"{num_classes}", "pass the --data it was trained on, or train a model for this data "
                                               "with 'edgeprune train'")
    if spec["in_channels"] != in_channels:
        kind = {1: "greyscale", 3: "RGB"}
        raise UserInputError(f"{path} takes {spec['in_channels']}-channel images but {data} has {in_channels}-"
                             f"channel ({kind.get(in_channels, 'other')}) images",
                             f"pass {kind.get(spec['in_channels'], 'matching')} data, or train a model for this data "
                             "with 'edgeprune train'")


def model_from_checkpoint(obj: Any, path: Path, allow_factory: str | None = None
                          ) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """(model in eval mode, spec, meta) from what ``read_file`` returned for a checkpoint."""
    spec = checkpoint_spec(obj, path)
    name = spec["name"]
    if is_user_ref(name) and name != allow_factory:
        raise UserInputError(f"{path} was made from user code {name}, which is imported only on request",
                             f"pass --model {name} if you trust that code")
    state = obj["state_dict"]
    model = build_from_spec(spec)
    reshape_to_records(model, obj["layers"], str(path), state)
    check_state_dict(model, state, path)
    model.load_state_dict(state, strict=True)
    meta = obj.get("meta")
    return model.eval(), spec, dict(meta) if isinstance(meta, Mapping) else {}


def load_checkpoint(path: str | os.PathLike, allow_factory: str | None = None,
                    trust: bool = False) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """(model in eval mode with the saved shapes and weights, spec, meta) from ``save_checkpoint``'s file."""
    path = Path(path)
    return model_from_checkpoint(read_file(path, trust), path, allow_factory)


def _extract_state_dict(obj: Any, path: Path) -> Mapping[str, Any]:
    """The state_dict inside what ``torch.load`` returned (plain, wrapped, checkpoint or module)."""
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, Mapping):
        if is_checkpoint_obj(obj):
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


def _io_layers(model: nn.Module) -> tuple[str | None, str | None]:
    """State keys of the first conv's weight (input channels) and the last linear's weight (classes)."""
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return (f"{convs[0]}.weight" if convs else None), (f"{linears[-1]}.weight" if linears else None)


def _mismatch_meaning(key: str, got: torch.Tensor, want: torch.Tensor, model: nn.Module) -> tuple[str, str]:
    """What a mis-shaped first conv or classifier means, and what to do; generic words otherwise."""
    first_conv, classifier = _io_layers(model)
    if key == first_conv and got.ndim == 4 and got.shape[1] != want.shape[1]:
        return (f": the weights take {got.shape[1]}-channel images, the model built for the data takes "
                f"{want.shape[1]}", f"pass data with {got.shape[1]}-channel images, or weights trained on "
                                    f"{want.shape[1]}-channel ones")
    if key == classifier and got.ndim == 2 and got.shape[0] != want.shape[0]:
        return (f": the weights are for {got.shape[0]} classes, the data has {want.shape[0]}",
                "pass the --data they were trained on, or weights for this data's classes")
    return "", "check --model and the data's classes and channels"


def check_state_dict(model: nn.Module, state: Mapping[str, Any], path: Path) -> None:
    """Raise ``UserInputError`` naming the first missing, unexpected or mis-shaped key."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        raise UserInputError(f"{path} lacks {len(missing)} of the model's weights, first '{missing[0]}'",
                             "is it a checkpoint for this --model?")
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise UserInputError(f"{path} has {len(unexpected)} weights the model lacks, first '{str(unexpected[0])[:80]}'",
                             "is it a checkpoint for this --model?")
    for key, want in expected.items():
        got = state[key]
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(want.shape):
            if not isinstance(got, torch.Tensor):
                raise UserInputError(f"{path}: '{key}' is a {type(got).__name__}, not a tensor", "the file is damaged")
            meaning, hint = _mismatch_meaning(key, got, want, model)
            raise UserInputError(f"{path}: '{key}' has shape {list(got.shape)} but the model expects "
                                 f"{list(want.shape)}{meaning}", hint)


def load_weights_from(model: nn.Module, obj: Any, path: Path) -> nn.Module:
    """Load the state_dict inside ``obj`` (what ``read_file(path)`` returned) into ``model``, strictly."""
    state = _extract_state_dict(obj, path)
    state = _strip_prefix(state, set(model.state_dict()))
    check_state_dict(model, state, path)
    model.load_state_dict(state, strict=True)
    return model


def load_weights(model: nn.Module, path: str | os.PathLike, trust: bool = False) -> nn.Module:
    """Load a torchvision-style state_dict file into ``model`` (strict: same keys and shapes)."""
    path = Path(path)
    return load_weights_from(model, read_file(path, trust), path)
