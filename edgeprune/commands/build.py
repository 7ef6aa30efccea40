"""``edgeprune build``: prune, fine-tune, export, compile, gate and measure on a target."""
from __future__ import annotations

import argparse
import sys

from edgeprune.commands._args import (POSITIVE_INT, add_data, add_finetune, add_json, add_measure, add_method,
                                      add_model, add_out, add_samples, add_search, ranged)
from edgeprune.commands._device import add_device_arguments
from edgeprune.commands._output import check_outputs, emit_json
from edgeprune.targets.base import PRECISIONS

EPILOG = """examples:
  edgeprune build --target x86 --weights runs/base/model.pt --ratio 0.5 --out runs/x86
  edgeprune build --target x86 --weights runs/base/model.pt --budget 0.5x --max-accuracy-drop 1 --out runs/fast
  edgeprune build --target arm64 --weights model.pt --budget-ms 8 --device pi@raspberrypi --out runs/pi

exit codes: 0 built and every gate passed (a latency budget "met" at --confidence); 1 a gate failed (parity,
latency budget "missed" at --confidence, accuracy drop: the report is written, with the figures); 2 bad input
(nothing written); 3 the latency budget is "undecided": over or under it by less than the measurement noise
after --max-rounds rounds (the report is written, with the interval, rounds and spread); 130/143 interrupted
(nothing written).
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("build", help="prune, fine-tune, export, compile and measure on a target",
                       description="Prune a trained model, fine-tune it, export ONNX, compile the baseline and the "
                                   "pruned model for TARGET, check both against PyTorch, measure their latency "
                                   "interleaved on the target's runtime, and write report.json/report.md.",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    p.add_argument("--target", required=True, help="target profile (see 'edgeprune targets'), or a .toml file")
    add_model(p)
    add_out(p)
    add_method(p)
    p.add_argument("--budget-ms", dest="budget", metavar="MS",
                   help="latency budget on the target instead of --ratio: milliseconds (8, 8ms) or a share of the "
                        "baseline's measured latency (0.5x); channels are chosen per layer from the target's measured "
                        "latency table and the budget is checked by measurement")
    p.add_argument("--budget", dest="budget", metavar="SHARE", help="same as --budget-ms (e.g. --budget 0.5x)")
    p.add_argument("--budget-attempts", type=ranged(int, 1, 20), default=3,
                   help="search-measure-tighten attempts, in [1, 20]: a search whose model measures over the "
                        "budget is rerun at a tighter aim; a retry that then lands more than --search-near under "
                        "the budget uses one more attempt to aim back up between the two, and the slowest attempt "
                        "within the budget is kept. Default: %(default)s")
    p.add_argument("--max-accuracy-drop", type=ranged(float, 0, 100), metavar="POINTS",
                   help="accuracy bar: fail (exit 1, report written) when the pruned model's top-1 is more than "
                        "POINTS percentage points below the baseline's. Without --ratio and --budget-ms: build "
                        "the fastest model within the bar (budget searches bisected on the measured latency, each "
                        "judged on --search-holdout held-out training images; the test set then checks the choice)")
    p.add_argument("--bar-probes", type=ranged(int, 1, 20), default=4, metavar="N",
                   help="budget searches (each with its fine-tune) the fastest-within-the-bar mode may run. "
                        "Default: %(default)s")
    add_search(p)
    p.add_argument("--precision", choices=PRECISIONS, help="default: the target's default precision")
    add_finetune(p)
    add_measure(p)
    p.add_argument("--eval-limit", type=POSITIVE_INT, help="evaluate accuracy on the first N test images only")
    add_samples(p)
    add_json(p)
    add_data(p)
    add_device_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    from edgeprune.build import BuildConfig, BuildGateFailed, run_build
    from edgeprune.commands._device import one_device
    from edgeprune.loading import check_out_dir
    from edgeprune.profiles import load_profile

    check_outputs(args)
    cfg = BuildConfig.from_args(args)
    check_out_dir(cfg.out, cfg.force)
    with one_device(args, load_profile(cfg.target)) as device:
        cfg.device = device
        try:
            report = run_build(cfg)
        except BuildGateFailed as exc:
            _print(exc.report, args)
            raise
    _print(report, args)
    return 0


def _print(report: dict, args: argparse.Namespace) -> None:
    from edgeprune.report import summary_table, verdict

    emit_json(report, args.json)
    if args.json != "-":
        print(summary_table(report))
        print()
        print(verdict(report))
        print(f"report: {args.out}/report.md, {args.out}/report.json")
    sys.stdout.flush()
