"""edgeprune: prune a trained CNN into the fastest model that meets its accuracy bar on a named edge runtime.

Invariant: importing ``edgeprune`` (and ``edgeprune.targets``, ``edgeprune.measure``)
does not import torch; the torch-side API is loaded on first use, so the on-device
runner works with only numpy and a runtime installed.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["prune", "__version__"]


def __getattr__(name: str):
    if name == "prune":
        from edgeprune.prune import prune as _prune

        return _prune
    raise AttributeError(f"module 'edgeprune' has no attribute {name!r}")
