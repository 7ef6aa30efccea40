"""``edgeprune models``: the built-in model zoo and each model's default input size."""
from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    return sub.add_parser("models", help="list the built-in model zoo",
                          description="List the built-in models (state_dict keys compatible with torchvision's) "
                                      "and their default input sizes. Your own model: --model package.module:factory.")


def run(args: argparse.Namespace) -> int:
    from edgeprune.models import MODEL_NAMES, default_input_size

    for name in MODEL_NAMES:
        print(f"{name:14s} default input {default_input_size(name)}x{default_input_size(name)}")
    return 0
