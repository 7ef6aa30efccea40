"""edgeprune: prune a trained CNN into the fastest model that meets its accuracy bar on a named edge runtime.

Invariant: importing ``edgeprune`` (and ``edgeprune.targets``, ``edgeprune.measure``)
does not import torch; the torch-side API (``edgeprune.prune_channels``) is loaded on
first use, so the on-device runner works with only numpy and a runtime installed.
"""
from __future__ import annotations

import os

# ONNX Runtime (1.29+) collects usage telemetry unless told not to, and leaves a session file in the
# temp folder; a tool that deploys users' models keeps quiet (a user who wants it sets the variable to 0).
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"
__all__ = ["prune_channels", "__version__"]


def __getattr__(name: str):
    # ``edgeprune.prune`` is the subpackage; the function has its own name so importing the
    # subpackage (which sets ``edgeprune.prune``) can never shadow it.
    if name == "prune_channels":
        from edgeprune.prune import prune_channels

        return prune_channels
    raise AttributeError(f"module 'edgeprune' has no attribute {name!r}")
