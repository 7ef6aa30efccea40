"""``edgeprune prune``: prune (by ratio, FLOPs target or latency budget) and fine-tune, no deployment."""
from __future__ import annotations

import argparse

from edgeprune.commands._args import (NONNEG_INT, add_data, add_finetune, add_json, add_method, add_model, add_out,
                                      add_search)
from edgeprune.commands._output import check_outputs, emit_json


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("prune", help="prune and fine-tune a model (no compile/measure)",
                       description="Prune a trained model by --ratio, --flops-target or a latency --budget-ms on "
                                   "--target, fine-tune it, and write OUT/pruned.pt and OUT/prune.json. The target's "
                                   "runtime is needed only with --budget-ms.")
    add_model(p)
    add_out(p)
    p.add_argument("--target", default="local", help="target whose channel multiple (and latency, with --budget-ms) "
                                                     "to prune for. Default: %(default)s")
    add_method(p)
    p.add_argument("--budget-ms", dest="budget", metavar="MS", help="latency budget on --target (ms, or a share like 0.5x)")
    p.add_argument("--threads", type=NONNEG_INT, help="runtime threads for the latency table (with --budget-ms)")
    add_search(p)
    add_finetune(p)
    add_json(p, "prune.json")
    add_data(p)
    return p


def run(args: argparse.Namespace) -> int:
    from edgeprune.build import BuildConfig, run_prune
    from edgeprune.loading import check_out_dir

    check_outputs(args)
    cfg = BuildConfig.from_args(args)
    check_out_dir(cfg.out, cfg.force)
    s = run_prune(cfg)
    emit_json(s, args.json)
    if args.json == "-":
        return 0
    acc, flops = s["accuracy"], s["flops"]
    print(f"{s['prune']['method']}: {s['prune']['channels_before']} -> {s['prune']['channels_after']} channels, "
          f"MACs x{flops['pruned'] / flops['baseline']:.2f}, top-1 {acc['baseline']:.4f} -> "
          + (f"{acc['before_finetune']:.4f} (pruned) -> " if acc["before_finetune"] is not None else "")
          + f"{acc['after_finetune']:.4f} (fine-tuned); {args.out}/pruned.pt")
    return 0
