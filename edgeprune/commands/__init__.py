"""The ``edgeprune`` command line: one module per subcommand, a lazy registry, one error handler.

Each module in this package exposes ``add_parser(subparsers) -> parser`` and ``run(args) -> int``
and holds only what the command line needs (flags, printing); the work lives in the library.
Invariants: modules are imported when the parser is built, and the heavy libraries (torch, the
runtimes) only inside ``run``; every ``EdgepruneError`` — a malformed command line included —
becomes one line ``edgeprune: error: ...`` on stderr and its exit code (2 bad input, 1 failed
gate or step); an interruption (Ctrl-C, SIGTERM) unwinds every ``with`` block and exits 130/143;
results go to stdout, progress to stderr.
"""
from __future__ import annotations

import importlib
import sys
from typing import Sequence

from edgeprune import __version__
from edgeprune.commands._args import Parser
from edgeprune.errors import EdgepruneError

COMMANDS: dict[str, str] = {
    "train": "edgeprune.commands.train",
    "prune": "edgeprune.commands.prune",
    "build": "edgeprune.commands.build",
    "bench": "edgeprune.commands.bench",
    "lut": "edgeprune.commands.lut",
    "targets": "edgeprune.commands.targets",
    "models": "edgeprune.commands.models",
    "device-check": "edgeprune.commands.device_check",
}

EPILOG = """examples:
  edgeprune train --model resnet20 --data fashion-mnist --epochs 1 --out runs/base
  edgeprune build --target x86 --weights runs/base/model.pt --data fashion-mnist --ratio 0.5 --out runs/build
  edgeprune build --target x86 --weights runs/base/model.pt --budget 0.5x --out runs/budget
  edgeprune targets
"""


def make_parser() -> Parser:
    import argparse

    parser = Parser(prog="edgeprune",
                    description="Prune a trained PyTorch CNN into the fastest model that still meets its accuracy "
                                "bar on a named edge target, measured on that target's real runtime.",
                    formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"edgeprune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = module.add_parser(sub)
        p.set_defaults(func=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from edgeprune.interrupt import describe, signals_as_exceptions

    try:
        with signals_as_exceptions():  # SIGINT/SIGTERM/SIGHUP unwind like Ctrl-C (see edgeprune.interrupt)
            args = make_parser().parse_args(argv)
            if not getattr(args, "func", None):
                make_parser().print_help(sys.stderr)
                return 2
            return args.func(args)
    except EdgepruneError as exc:
        print(f"edgeprune: error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        line, code = describe(exc)
        print(f"edgeprune: error: {line}", file=sys.stderr)
        return code
    except BrokenPipeError:  # stdout closed early (``edgeprune targets | head``): not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
