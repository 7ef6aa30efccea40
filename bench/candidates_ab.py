"""One knapsack budget search's candidates, measured side by side: does the predictor price them alike?

Builds (or reads from cache) the target's latency table for ResNet-20 on Fashion-MNIST, calibrates the
predictor as the ``--budget-ms`` driver does, runs the knapsack search's candidate generation and
arbitration at ``--budget`` of the calibrated baseline, then measures the unpruned model and every candidate
paired against the unpruned model in ``--rounds`` fresh processes (measure.paired). Prints each candidate's counts,
predicted ms, raw table sum, held-out top-1 after BN re-estimation and measured ms. Candidates the search
predicts at the same latency but that measure differently show where the table's shape is wrong.

Usage: python bench/candidates_ab.py --weights CKPT [--target x86] [--budget 0.5] [--rounds 5]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--target", default="x86")
    ap.add_argument("--budget", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    from edgeprune.data import load_dataset
    from edgeprune.loading import load_model
    from edgeprune.measure.protocol import MeasureSettings
    from edgeprune.profiles import load_profile
    from edgeprune.prune.base import PruneContext
    from edgeprune.search.allocate import Allocator
    from edgeprune.search.settings import SearchSettings
    from edgeprune.search.steer import measured_candidates
    from edgeprune.search.hardware import HardwareSearch

    train = load_dataset("fashion-mnist", "train")
    model, _ = load_model("resnet20", args.weights, num_classes=10, in_channels=1)
    model.eval()
    example = torch.zeros(1, 1, 28, 28)
    profile = {**load_profile(args.target), "precision": "fp32"}
    hs = HardwareSearch(model, example, profile, "fp32", 1, MeasureSettings(threads=1, warmup_s=0.5, min_seconds=1.0),
                        progress=False)
    fit = hs.calibrate()
    print(f"calibration: scale {fit['scale']:.3f}, offset {fit['offset_ms']:+.3f} ms; "
          + ", ".join(f"{k} {v['ms']:.3f} ms" for k, v in fit["calibration"]["models"].items()))
    budget = args.budget * hs.baseline_ms
    ctx = PruneContext(example_inputs=example, round_to=hs.multiple, train_ds=train, progress=False,
                       options={"method": "taylor_bn"})
    allocator = Allocator(hs, ctx, "taylor_bn", SearchSettings(seed=0))
    cands, _, models = measured_candidates(allocator, budget)  # what the search measures (and refits on)
    allocator.arbiter.choose(cands, models)
    models = {"unpruned": model, **{c.name: allocator.subnet(c) for c in cands}}
    measured = hs.measure_models(models, rounds=args.rounds)  # an independent, longer measurement of them all
    print(f"budget {budget:.3f} ms; widths {hs.widths}; unpruned measured {measured['unpruned']:.3f} ms")
    print("| candidate | counts | predicted ms | raw table sum ms | held-out top-1 | search's measured ms | measured ms |")
    print("|---|---|---|---|---|---|---|")
    for c in cands:
        print(f"| {c.name} | {c.counts} | {c.predicted_ms:.3f} | {hs.predictor.raw_ms(c.counts):.3f} | "
              f"{c.holdout_top1:.3f} | {c.measured_ms:.3f} | {measured[c.name]:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
