"""The console entry point (``edgeprune``); the subcommands live in ``edgeprune.commands``."""
from __future__ import annotations

import sys

from edgeprune.commands import main, make_parser

__all__ = ["main", "make_parser"]

if __name__ == "__main__":
    sys.exit(main())
