"""Print the runtime's channel block (``measure.staircase.channel_block``) read off a model's latency table.

    python bench/channel_block.py --target x86 --model resnet18 --image-size 96 --in-channels 1

The table is the budget search's own (``search.hardware.HardwareSearch`` with ``channel_block``: built on
this machine or read from the cache, ~/.cache/edgeprune/lut), at the profile's channel multiple for its
default precision and 1 thread; nothing else is measured.
"""
from __future__ import annotations

import argparse
import json

import torch

from edgeprune.measure.protocol import MeasureSettings
from edgeprune.models import build_model
from edgeprune.profiles import load_profile
from edgeprune.search.hardware import HardwareSearch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="x86")
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--image-size", type=int, default=28)
    ap.add_argument("--in-channels", type=int, default=1)
    args = ap.parse_args()
    profile = load_profile(args.target)
    precision = profile["default_precision"]
    model = build_model(args.model, num_classes=10, in_channels=args.in_channels).eval()
    example = torch.zeros(1, args.in_channels, args.image_size, args.image_size)
    hs = HardwareSearch(model, example, profile, precision, 1, MeasureSettings(threads=1), channel_block=True)
    print(f"{args.target} {args.model} {args.image_size}px: {hs.block.summary()}")
    print(json.dumps(hs.block.to_dict(), indent=1))


if __name__ == "__main__":
    main()
