"""The built-in model zoo and the registry that builds models by name.

Invariant: ``build_model(name, ...)`` returns a freshly initialised ``nn.Module`` for every
name in ``MODEL_NAMES`` and for a user factory ``package.module:factory``, or raises
``UserInputError`` listing the choices; ``model_spec`` returns a JSON-able dict that
``build_model(**...)`` (through ``build_from_spec``) rebuilds the same architecture from.
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


def is_user_ref(name: str) -> bool:
    """True for ``package.module:factory`` (a user's own model)."""
    return ":" in name


def _zoo_entry(name: str) -> tuple[Callable[..., nn.Module], int]:
    if name not in _ZOO:
        raise UserInputError(f"unknown model '{name}'",
                             f"choose one of {', '.join(MODEL_NAMES)}, or package.module:factory")
    return _ZOO[name]


def _check_sizes(num_classes: Any, in_channels: Any) -> None:
    for label, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserInputError(f"{label} must be a positive integer, got {value!r}")


def _check_options(name: str, factory: Callable[..., nn.Module], kwargs: dict[str, Any]) -> None:
    accepted = set(inspect.signature(factory).parameters) - {"num_classes", "in_channels"}
    for key in kwargs:
        if key not in accepted:
            options = ", ".join(sorted(accepted)) or "none"
            raise UserInputError(f"model '{name}' takes no option '{key}'", f"its options: {options}")


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


def build_from_spec(spec: Mapping[str, Any]) -> nn.Module:
    """``build_model`` from a ``model_spec`` dict (no checks on who may name a factory)."""
    missing = [k for k in SPEC_KEYS if k not in spec]
    if missing:
        raise UserInputError(f"model spec lacks {missing[0]!r}", "the checkpoint was not written by edgeprune")
    return build_model(str(spec["name"]), int(spec["num_classes"]), int(spec["in_channels"]), **dict(spec["kwargs"]))


__all__ = ["MODEL_NAMES", "build_model", "build_from_spec", "default_input_size", "model_spec", "is_user_ref"]
