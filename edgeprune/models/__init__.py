"""The built-in model zoo and the registry that builds models by name.

Invariant: ``build_model(name, ...)`` returns a freshly initialised ``nn.Module`` for every
name in ``MODEL_NAMES`` and for a user factory ``package.module:factory``, or raises
``UserInputError`` listing the choices; ``model_spec`` returns a JSON-able dict that
``build_model(**...)`` (through ``build_from_spec``) rebuilds the same architecture from.
Sizes are bounded (``MAX_CLASSES``, ``MAX_IN_CHANNELS``, numeric options) and ``check_spec``
validates a spec read from a file field by field before anything is built.
Every zoo model takes ``num_classes`` and ``in_channels`` (1 for grey images, 3 for RGB).
"""
from __future__ import annotations

import inspect
import json
from types import MappingProxyType
from typing import Any, Callable, Mapping

from torch import nn

from edgeprune.errors import UserInputError
from edgeprune.models.mobilenet_v2 import mobilenet_v2
from edgeprune.models.resnet import resnet18
from edgeprune.models.resnet_cifar import resnet20, resnet32, resnet56
from edgeprune.models.vgg import vgg16_bn

# name -> (factory, default square input size)
_ZOO: Mapping[str, tuple[Callable[..., nn.Module], int]] = MappingProxyType({
    "resnet20": (resnet20, 32),
    "resnet32": (resnet32, 32),
    "resnet56": (resnet56, 32),
    "vgg16_bn": (vgg16_bn, 32),
    "mobilenet_v2": (mobilenet_v2, 224),
    "resnet18": (resnet18, 224),
})

MODEL_NAMES: tuple[str, ...] = tuple(_ZOO)
SPEC_KEYS = ("name", "num_classes", "in_channels", "kwargs")
# Bounds that keep a hostile spec from allocating without limit (ImageNet-21k has 21,841 classes).
MAX_CLASSES = 100_000
MAX_IN_CHANNELS = 64
_OPTION_BOUNDS: Mapping[str, tuple[float, float]] = MappingProxyType({"width_mult": (0.05, 4.0)})


def is_user_ref(name: str) -> bool:
    """True for ``package.module:factory`` (a user's own model)."""
    return ":" in name


def _zoo_entry(name: str, source: str = "") -> tuple[Callable[..., nn.Module], int]:
    if name not in _ZOO:
        raise UserInputError(f"{source}unknown model '{name}'",
                             f"choose one of {', '.join(MODEL_NAMES)}, or package.module:factory")
    return _ZOO[name]


def _check_sizes(num_classes: Any, in_channels: Any, source: str = "") -> None:
    for label, value, top in (("num_classes", num_classes, MAX_CLASSES), ("in_channels", in_channels, MAX_IN_CHANNELS)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
            raise UserInputError(f"{source}{label} must be an integer from 1 to {top}, got {_short(value)}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_options(name: str, factory: Callable[..., nn.Module], kwargs: Mapping[str, Any], source: str = "") -> None:
    accepted = set(inspect.signature(factory).parameters) - {"num_classes", "in_channels"}
    for key, value in kwargs.items():
        if key not in accepted:
            options = ", ".join(sorted(accepted)) or "none"
            raise UserInputError(f"{source}model '{name}' takes no option '{key}'", f"its options: {options}")
        low, high = _OPTION_BOUNDS.get(key, (None, None))
        if low is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                or not low <= value <= high):
            raise UserInputError(f"{source}option {key} of model '{name}' must be a number from {low} to {high}, "
                                 f"got {_short(value)}")


def build_model(name: str, num_classes: int = 10, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """A new model ``name`` (zoo name or ``package.module:factory``) with random weights."""
    _check_sizes(num_classes, in_channels)
    if is_user_ref(name):
        from edgeprune.models.user import build_user_model

        return build_user_model(name, num_classes=num_classes, in_channels=in_channels, **kwargs)
    factory, _size = _zoo_entry(name)
    _check_options(name, factory, kwargs)
    return factory(num_classes=num_classes, in_channels=in_channels, **kwargs)


def default_input_size(name: str) -> int:
    """The square input side a zoo model is designed for (32 CIFAR-style, 224 ImageNet-style)."""
    if is_user_ref(name):
        raise UserInputError(f"no default input size for user model {name}", "pass --image-size")
    return _zoo_entry(name)[1]


def model_spec(name: str, num_classes: int = 10, in_channels: int = 3, **kwargs: Any) -> dict[str, Any]:
    """A JSON-able description that rebuilds this architecture: name, sizes and options."""
    _check_sizes(num_classes, in_channels)
    if not is_user_ref(name):
        _check_options(name, _zoo_entry(name)[0], kwargs)
    try:
        json.dumps(kwargs)
    except (TypeError, ValueError):
        raise UserInputError(f"options for model '{name}' must be plain values (numbers, strings, lists)") from None
    return {"name": name, "num_classes": num_classes, "in_channels": in_channels, "kwargs": dict(kwargs)}


def check_spec(spec: Any, source: str = "model spec") -> dict[str, Any]:
    """``spec`` checked field by field before anything is built: exactly ``SPEC_KEYS``, right types, bounded sizes.

    Raises ``UserInputError`` starting with ``source`` (e.g. the checkpoint's path); returns a plain copy.
    """
    try:
        return _checked_spec(spec, f"{source}: ")
    except UserInputError as exc:
        if exc.hint:
            raise
        raise UserInputError(exc.message, "the file is damaged or was not written by edgeprune") from None


def _checked_spec(spec: Any, where: str) -> dict[str, Any]:
    if not isinstance(spec, Mapping):
        raise UserInputError(f"{where}the model spec is a {type(spec).__name__}, not a table",
                             "the file is damaged or was not written by edgeprune")
    missing = [k for k in SPEC_KEYS if k not in spec]
    extra = sorted(str(k) for k in spec if k not in SPEC_KEYS)
    if missing or extra:
        what = f"lacks the field {missing[0]!r}" if missing else f"has the unexpected field {_short(extra[0])}"
        raise UserInputError(f"{where}the model spec {what}", "the file is damaged or was not written by edgeprune")
    name, kwargs = spec["name"], spec["kwargs"]
    if not isinstance(name, str) or not name or len(name) > 200:
        raise UserInputError(f"{where}the model name must be a short string, got {_short(name)}")
    _check_sizes(spec["num_classes"], spec["in_channels"], where)
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise UserInputError(f"{where}the model options must be a table of names, got {_short(kwargs)}")
    if is_user_ref(name):
        from edgeprune.models.user import parse_ref

        try:
            parse_ref(name)
        except UserInputError as exc:
            raise UserInputError(f"{where}{exc.message}", exc.hint) from None
    else:
        _check_options(name, _zoo_entry(name, where)[0], kwargs, where)
    return {"name": name, "num_classes": spec["num_classes"], "in_channels": spec["in_channels"],
            "kwargs": dict(kwargs)}


def build_from_spec(spec: Mapping[str, Any]) -> nn.Module:
    """``build_model`` from a ``model_spec`` dict, checked by ``check_spec`` (no checks on who may name a factory)."""
    spec = check_spec(spec)
    return build_model(spec["name"], spec["num_classes"], spec["in_channels"], **spec["kwargs"])


__all__ = ["MODEL_NAMES", "MAX_CLASSES", "MAX_IN_CHANNELS", "build_model", "build_from_spec", "check_spec",
           "default_input_size", "model_spec", "is_user_ref"]
