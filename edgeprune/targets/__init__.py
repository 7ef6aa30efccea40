"""Registry of runtime target modules (see ``base`` for the protocol).

Invariant: a runtime module is imported only when asked for, so a missing
runtime never breaks the others, and nothing here imports torch.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from edgeprune.errors import RuntimeUnavailable, UserInputError
from edgeprune.targets.base import PRECISIONS, Artifact  # noqa: F401

_MODULES = {
    "openvino": "edgeprune.targets.openvino",
    "onnxruntime": "edgeprune.targets.onnxruntime",
    "ncnn": "edgeprune.targets.ncnn",
    "mnn": "edgeprune.targets.mnn",
    "tensorrt": "edgeprune.targets.tensorrt",
}


def runtime_names() -> list[str]:
    return [name for name in _MODULES if _module_exists(name)]


def _module_exists(name: str) -> bool:
    return importlib.util.find_spec(_MODULES[name]) is not None


def get_runtime(name: str) -> ModuleType:
    """The target module for ``name`` (not checked for availability)."""
    if name not in _MODULES or not _module_exists(name):
        raise UserInputError(f"unknown runtime {name!r}", f"choose one of: {', '.join(runtime_names())}")
    return importlib.import_module(_MODULES[name])


def require_runtime(name: str) -> ModuleType:
    """The target module for ``name``, or a RuntimeUnavailable error naming the extra to install."""
    mod = get_runtime(name)
    ok, reason = mod.available()
    if not ok:
        raise RuntimeUnavailable(
            f"runtime {name} is not available here: {reason}",
            f"install it with: pip install 'edgeprune[{mod.EXTRA}]'" if mod.EXTRA else None,
        )
    return mod
