"""Same network, same number of training images: does the budget search's training reach one continuous fine-tune?

In bench/hw_search.py the search's winner reaches the user after training in pieces: the finalists' probe
(``finalist_batches`` mini-batches of ``batch_size`` at ``step_lr``, cosine), the equal-training step
(``Arbiter.level``: the rest of ``SearchSettings.training_images``, cosine again), then the build's fine-tune (here the
bench's: ``--ft-epochs`` at batch 128, cosine, after BN re-estimation). The control arm uniform+ gets the same number
of images in one cosine schedule. On ResNet-18 @96 (OpenVINO, 0.35x, seed 1, session 45) the search's winner *was*
uniform L1 pruning at uniform+'s exact counts, and scored 91.28% against uniform+'s 91.80%. This script trains one
pruned network (uniform L1 at ``--counts``) both ways, and one way between them, from the same checkpoint, per seed:

- ``search``: 40 mini-batches (probe), 240 more (level), BN re-estimated, then the fine-tune: three cosine schedules;
- ``search (one schedule)``: the search's 280 mini-batches as one cosine schedule, BN re-estimated, then the fine-tune;
- ``continuous``: BN re-estimated, then one cosine schedule over the same number of images at batch 128 (uniform+);
- ``search (its split)`` (``--split``): the ``search`` recipe with its first two stages, and the BN re-estimation
  before them, on the search's own training split (``arbitrate.split_train``: ``holdout_images`` held out, seeded
  by the seed), as inside the search.

Every recipe starts from the same pruned weights with BN re-estimated on 512 training images, trains on the full
training set (but for ``search (its split)``), and is scored on the full test set.

Usage: python bench/search_training.py --weights CKPT --image-size 96 [--counts 304,152,...] [--seeds 0,1]
           [--ft-epochs 0.15] [--recipes search,continuous] [--split] [--out DIR]
"""
from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from hw_search import l1_at_counts  # noqa: E402  (the uniform arm's model at given counts)

# uniform L1 at ResNet-18 @96's 0.35x budget on OpenVINO (session 45, seed 1): the search's winner and uniform+
DEFAULT_COUNTS = "304,152,80,40,40,40,80,80,152,152,304,304"


def recipes(settings, ft_epochs: float, n_train: int) -> dict[str, list[dict]]:
    """Each recipe as its training stages: mini-batches or epochs, batch size, lr, seed offset, BN re-estimated
    first, and (``fit``) whether the stage trains on the search's training split instead of the full set."""
    probe = settings.finalist_batches
    level = settings.training_images(finalists=True) // settings.batch_size - probe
    b, lr = settings.batch_size, settings.step_lr
    fine = {"epochs": ft_epochs, "batch": 128, "lr": lr, "seed": 0, "bn": True}
    extra = settings.training_images(finalists=True) / n_train
    search = [{"steps": probe, "batch": b, "lr": lr, "seed": 0, "bn": False},
              {"steps": level, "batch": b, "lr": lr, "seed": 1, "bn": False}, fine]
    return {
        "search": search,
        "search (its split)": [{**st, "fit": True} for st in search[:2]] + [fine],
        "search (one schedule)": [{"steps": probe + level, "batch": b, "lr": lr, "seed": 0, "bn": False}, fine],
        "continuous": [{**fine, "epochs": ft_epochs + extra}],
    }


def run_recipe(start, stages: list[dict], train_ds, fit_ds, test_ds, seed: int) -> dict:
    from edgeprune.prune.bn import recalibrate_bn
    from edgeprune.train import evaluate, train

    m = copy.deepcopy(start)
    images = 0
    t = time.perf_counter()
    for st in stages:
        data = fit_ds if st.get("fit") else train_ds
        if st["bn"]:
            recalibrate_bn(m, data, 512, seed=seed)
        hist = train(m, data, epochs=st.get("epochs", 1.0), max_steps=st.get("steps"), lr=st["lr"],
                     batch_size=st["batch"], augment=False, progress=False, desc="stage", seed=seed + st["seed"])
        images += int(hist["steps"]) * st["batch"]
    return {"top1": evaluate(m.eval(), test_ds, progress=False), "images": images, "seconds": time.perf_counter() - t}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--image-size", type=int)
    ap.add_argument("--counts", default=DEFAULT_COUNTS, help="kept channels per prunable group (uniform L1 cut)")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--ft-epochs", type=float, default=0.15)
    ap.add_argument("--recipes", help="comma-separated recipe names (default: all but 'search (its split)')")
    ap.add_argument("--split", action="store_true", help="also the search recipe on the search's own training split")
    ap.add_argument("--out", default="bench/results/search_training")
    args = ap.parse_args()

    from edgeprune.data import load_dataset
    from edgeprune.loading import load_model
    from edgeprune.prune.bn import recalibrate_bn
    from edgeprune.search.arbitrate import split_train
    from edgeprune.search.settings import SearchSettings
    from edgeprune.train import evaluate

    torch.set_num_threads(max(1, torch.get_num_threads()))
    train_ds, test_ds = (load_dataset(args.data, s, image_size=args.image_size) for s in ("train", "test"))
    model, _ = load_model(None, args.weights, num_classes=train_ds.num_classes, in_channels=train_ds.channels)
    example = torch.zeros(1, train_ds.channels, train_ds.image_size, train_ds.image_size)
    counts = [int(c) for c in args.counts.split(",")]
    settings = SearchSettings()
    plan = recipes(settings, args.ft_epochs, len(train_ds))
    names = args.recipes.split(",") if args.recipes else [n for n in plan if n != "search (its split)"]
    if args.split and "search (its split)" not in names:
        names.append("search (its split)")
    unknown = sorted(set(names) - set(plan))
    if unknown:
        raise SystemExit(f"unknown recipe(s) {unknown}; choose from {sorted(plan)}")
    plan = {n: plan[n] for n in names}
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        fit_ds = split_train(train_ds, settings.holdout_images, seed)[0]
        try:
            cut = l1_at_counts(model, example, counts)
        except ValueError as exc:
            raise SystemExit(f"--counts: {exc}") from None
        start = recalibrate_bn(copy.deepcopy(cut), train_ds, 512, seed=seed)
        start_fit = recalibrate_bn(copy.deepcopy(cut), fit_ds, 512, seed=seed)  # as the search re-estimates it
        before = evaluate(start.eval(), test_ds, progress=False)
        for name, stages in plan.items():
            first = start_fit if stages[0].get("fit") else start
            r = run_recipe(first, stages, train_ds, fit_ds, test_ds, seed)
            rows.append({"seed": seed, "recipe": name, "top1_after_prune": before, **r})
            print(f"seed {seed} {name:22s} top-1 {100 * r['top1']:.2f}% ({r['images']} images, {r['seconds']:.0f} s)",
                  flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"command": "python " + shlex.join(sys.argv), "counts": counts, "recipes": plan, "rows": rows,
              "weights": args.weights}
    (out / "search_training.json").write_text(json.dumps(result, indent=1))
    lines = [f"# {__doc__.splitlines()[0]}", "", f"Command: `{result['command']}`", "",
             "| recipe | seeds | top-1 % mean ± std | per seed | training images |", "|---|---|---|---|---|"]
    for name in plan:
        got = [r for r in rows if r["recipe"] == name]
        acc = np.array([100 * r["top1"] for r in got])
        lines.append(f"| {name} | {len(got)} | {acc.mean():.2f} ± {acc.std():.2f} | "
                     f"{', '.join(f'{a:.2f}' for a in acc)} | {got[0]['images']} |")
    (out / "search_training.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
