"""A user's own model, named on the command line as ``package.module:factory``.

Invariant: ``build_user_model`` imports only the module the user named, calls the named
callable with the keyword arguments it accepts (``num_classes``, ``in_channels`` and any
options), and returns an ``nn.Module`` — or raises ``UserInputError`` with one line when the
reference is malformed, the module or attribute is missing, or the result is not a module.
Errors raised inside the user's own code propagate unchanged.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

from torch import nn

from edgeprune.errors import UserInputError


def parse_ref(ref: str) -> tuple[str, str]:
    """Split ``package.module:factory`` into its module and attribute parts."""
    module, sep, attr = ref.rpartition(":")
    parts_ok = all(p.isidentifier() for p in module.split(".")) and all(p.isidentifier() for p in attr.split("."))
    if not sep or not module or not attr or not parts_ok:
        raise UserInputError(f"bad model reference '{ref}'", "write it as package.module:factory")
    return module, attr


def _import(module: str, ref: str) -> Any:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            raise UserInputError(f"cannot import module '{module}' for --model {ref}",
                                 "install it or add its folder to PYTHONPATH") from None
        raise UserInputError(f"importing '{module}' for --model {ref} failed: {exc}") from None


def resolve_factory(ref: str) -> Callable[..., Any]:
    """The callable that ``ref`` names (imports its module)."""
    module_name, attr = parse_ref(ref)
    obj = _import(module_name, ref)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserInputError(f"module '{module_name}' has no attribute '{attr}'",
                                 f"check the name after ':' in --model {ref}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserInputError(f"'{ref}' is not callable", "name a function or class that returns an nn.Module")
    return obj


def _accepted(factory: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``kwargs`` the factory's signature accepts (all of them with **kwargs)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: pass everything
        return dict(kwargs)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return dict(kwargs)
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in kwargs.items() if k in names}


def build_user_model(ref: str, **kwargs: Any) -> nn.Module:
    """Call the factory ``ref`` names with the keyword arguments it accepts.

    ``num_classes`` and ``in_channels`` are passed when the factory takes them; other options
    it does not take are an error (silently ignoring an option would build the wrong model).
    """
    factory = resolve_factory(ref)
    passed = _accepted(factory, kwargs)
    dropped = sorted(set(kwargs) - set(passed) - {"num_classes", "in_channels"})
    if dropped:
        raise UserInputError(f"{ref} takes no option {dropped[0]!r}", "drop the option or add it to the factory")
    model = factory(**passed)
    if not isinstance(model, nn.Module):
        raise UserInputError(f"{ref} returned {type(model).__name__}, not a torch.nn.Module",
                             "the factory must build and return the model")
    return model
