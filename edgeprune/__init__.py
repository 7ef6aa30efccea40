"""edgeprune: prune a trained CNN into the fastest model that meets its accuracy bar on a named edge runtime.

Invariant: importing ``edgeprune`` (and ``edgeprune.targets``, ``edgeprune.measure``)
does not import torch; the torch-side API (``edgeprune.prune_channels``) is loaded on
first use, so the on-device runner works with only numpy and a runtime installed.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["prune_channels", "__version__"]


def __getattr__(name: str):
    # ``edgeprune.prune`` is the subpackage; the function has its own name so importing the
    # subpackage (which sets ``edgeprune.prune``) can never shadow it.
    if name == "prune_channels":
        from edgeprune.prune import prune_channels

        return prune_channels
    raise AttributeError(f"module 'edgeprune' has no attribute {name!r}")
