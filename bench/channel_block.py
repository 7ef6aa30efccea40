"""Print the runtime's channel block (``measure.staircase.channel_block``) read off a model's latency table.

    python bench/channel_block.py --target x86 --model resnet18 --image-size 96 --in-channels 1

The table is built on this machine (or read from the cache, ~/.cache/edgeprune/lut) exactly as the
budget search builds it, at the profile's channel multiple for its default precision and 1 thread.
"""
from __future__ import annotations

import argparse
import json

import torch

from edgeprune.measure.staircase import channel_block
from edgeprune.models import build_model
from edgeprune.profiles import load_profile
from edgeprune.prune.graph import PruneGraph
from edgeprune.search.model_table import table_builder
from edgeprune.search.plan import build_plan
from edgeprune.search.units import plan_with_units


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="x86")
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--image-size", type=int, default=28)
    ap.add_argument("--in-channels", type=int, default=1)
    args = ap.parse_args()
    profile = load_profile(args.target)
    precision = profile["default_precision"]
    multiple = int(profile.get(f"{precision}_channel_multiple", profile["channel_multiple"]))
    model = build_model(args.model, num_classes=10, in_channels=args.in_channels).eval()
    graph = PruneGraph(model, torch.zeros(1, args.in_channels, args.image_size, args.image_size))
    _, table = plan_with_units(model, build_plan(graph), [g.channels for g in graph.groups],
                               table_builder(profile, precision, 1, progress=True, multiple=multiple))
    found = channel_block(table["rows"].values(), multiple)
    print(f"{args.target} {args.model} {args.image_size}px: {found.summary()}")
    print(json.dumps(found.to_dict(), indent=1))


if __name__ == "__main__":
    main()
