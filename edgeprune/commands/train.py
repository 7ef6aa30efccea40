"""``edgeprune train``: train a zoo model and write a pickle-free checkpoint."""
from __future__ import annotations

import argparse

from edgeprune.commands._args import NONNEG_INT, POSITIVE_FLOAT, add_data, add_json, add_model, add_out, ranged


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a baseline model from the zoo",
                       description="Train a zoo model on a dataset and write OUT/model.pt (architecture spec + "
                                   "state_dict, loads without pickle) and OUT/train.json (accuracy, history).")
    add_model(p, required=True)
    p.add_argument("--epochs", type=ranged(float, 0, 10000, low_open=True), default=1.0,
                   help="training epochs (fractions allowed). Default: %(default)s")
    p.add_argument("--lr", type=POSITIVE_FLOAT, default=0.05, help="learning rate. Default: %(default)s")
    p.add_argument("--batch-size", type=ranged(int, 1, 65536), default=128, help="Default: %(default)s")
    add_out(p)
    p.add_argument("--seed", type=NONNEG_INT, default=0)
    p.add_argument("--augment", action="store_true", help="random crop + flip (helps runs of many epochs)")
    add_json(p, "train.json")
    add_data(p)
    return p


def run(args: argparse.Namespace) -> int:
    from edgeprune.commands._output import check_outputs, emit_json
    from edgeprune.loading import check_out_dir
    from edgeprune.train import train_baseline

    check_outputs(args)
    check_out_dir(args.out, args.force)
    result = train_baseline(args.model, args.data, args.out, epochs=args.epochs, lr=args.lr,
                            batch_size=args.batch_size, image_size=args.image_size, force=args.force,
                            seed=args.seed, augment=args.augment, progress=not args.no_progress)
    emit_json(result, args.json)
    if args.json != "-":
        print(f"{result['model']} on {result['data']}: test top-1 {result['accuracy']:.4f} -> {args.out}/model.pt")
    return 0
