"""The ``edgeprune`` command line.

Invariant: every subcommand validates its inputs first; an ``EdgepruneError`` becomes one
line ``edgeprune: error: ...`` on stderr and its exit code (2 bad input, 1 failed gate);
results go to stdout, progress to stderr.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Callable, Sequence

from edgeprune import __version__
from edgeprune.errors import EdgepruneError

EPILOG = """examples:
  edgeprune train --model resnet20 --data fashion-mnist --epochs 1 --out runs/base
  edgeprune build --target x86 --model resnet20 --weights runs/base/model.pt \\
      --data fashion-mnist --method l1 --ratio 0.5 --out runs/build
  edgeprune targets
"""


def _add_common_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="fashion-mnist",
                   help="dataset: fashion-mnist (Debian's dataset-fashion-mnist), fashion-mnist:DIR, "
                        "cifar10:DIR (python-pickle layout), folder:DIR (class sub-folders), or a DIR "
                        "(layout detected). Default: %(default)s")
    p.add_argument("--image-size", type=int, default=None, metavar="PX",
                   help="resize images to PX x PX (e.g. 224 for mobilenet_v2); default: the data's own size")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars and step lines")


def _method_option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _add_method_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default="l1",
                   help="pruning method: l1, l2, random, taylor (first-order Taylor), slim (Network Slimming), "
                        "gate (Gate Decorator), thinet (ThiNet). Default: %(default)s")
    p.add_argument("--method-option", type=_method_option, action="append", default=[], metavar="KEY=VALUE",
                   help="method-specific setting, repeatable, e.g. sparsity=1e-3 sparsity_epochs=2 (slim), "
                        "tick_ratio=0.05 (gate), samples=2000 (thinet); see each method's module docstring")
    p.add_argument("--flops-target", type=float,
                   help="for iterative methods (gate): stop when the MACs are at most this share of the original")


def _add_sample_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--holdout-images", type=int, default=500,
                   help="held-out test images for the parity/accuracy gates. Default: %(default)s")
    p.add_argument("--calib-images", type=int, default=300,
                   help="training images for int8 calibration. Default: %(default)s")


def _add_kd_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kd-alpha", type=float, default=0.0,
                   help="knowledge distillation while fine-tuning: weight of the loss against the unpruned model's "
                        "soft outputs, in [0,1] (0 = off). Default: %(default)s")
    p.add_argument("--kd-temperature", type=float, default=4.0, help="distillation temperature. Default: %(default)s")


def _add_build(sub) -> None:
    p = sub.add_parser("build", help="prune, fine-tune, export, compile and measure on a target",
                       description="Prune a trained model, fine-tune it, export ONNX, compile the baseline and the "
                                   "pruned model for TARGET, check both against PyTorch, measure their latency "
                                   "interleaved on the target's runtime, and write report.json/report.md.",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    p.add_argument("--target", required=True, help="target profile (see 'edgeprune targets'), or a .toml file")
    p.add_argument("--model", help="zoo model name (see 'edgeprune models') or package.module:factory")
    p.add_argument("--weights", help="checkpoint from 'edgeprune train', or a state_dict file")
    p.add_argument("--out", required=True, help="output folder (must not exist unless --force)")
    _add_method_flags(p)
    p.add_argument("--ratio", type=float, default=0.5, help="share of prunable channels to remove, in (0,1). Default: %(default)s")
    p.add_argument("--budget-ms", dest="budget", metavar="MS",
                   help="latency budget on the target instead of --ratio: milliseconds (8, 8ms) or a share of the "
                        "baseline's measured latency (0.5x); channels are chosen per layer from the target's measured "
                        "latency table and the budget is checked by measurement")
    p.add_argument("--budget", dest="budget", metavar="SHARE", help="same as --budget-ms (e.g. --budget 0.5x)")
    p.add_argument("--budget-attempts", type=int, default=3, help="search-measure-tighten attempts. Default: %(default)s")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], help="default: the target's default precision")
    p.add_argument("--round-to", type=int, help="channel multiple to keep; default: the target's channel_multiple")
    p.add_argument("--finetune-epochs", type=float, default=1.0, help="fine-tuning epochs (fractions allowed, 0 skips). Default: %(default)s")
    p.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate. Default: %(default)s")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--augment", action="store_true", help="random crop + flip while fine-tuning (helps runs of many epochs)")
    _add_kd_flags(p)
    p.add_argument("--threads", type=int, help="runtime threads for measurement; default: the target's (0 = all cores)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds per model. Default: %(default)s")
    p.add_argument("--min-seconds", type=float, default=2.0, help="minimum timed seconds per measurement. Default: %(default)s")
    p.add_argument("--eval-limit", type=int, help="evaluate accuracy on the first N test images only")
    _add_sample_flags(p)
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load --weights with full pickle (runs code from the file: only for files you trust)")
    p.add_argument("--json", metavar="FILE", help="also write the report JSON to FILE ('-' for stdout)")
    _add_common_data(p)
    from edgeprune.remote.cli_glue import add_device_arguments

    add_device_arguments(p)
    p.set_defaults(func=_cmd_build)


def _cmd_build(a: argparse.Namespace) -> int:
    from edgeprune.build import BuildConfig, run_build
    from edgeprune.report import summary_table, verdict

    cfg = BuildConfig(target=a.target, data=a.data, out=a.out, model=a.model, weights=a.weights, method=a.method,
                      ratio=a.ratio, precision=a.precision, round_to=a.round_to, finetune_epochs=a.finetune_epochs,
                      lr=a.lr, batch_size=a.batch_size, augment=a.augment, image_size=a.image_size, threads=a.threads, rounds=a.rounds,
                      min_seconds=a.min_seconds, eval_limit=a.eval_limit, force=a.force,
                      trust_checkpoint=a.trust_checkpoint, progress=not a.no_progress, budget=a.budget,
                      budget_attempts=a.budget_attempts, flops_target=a.flops_target,
                      method_options=dict(a.method_option), holdout=a.holdout_images, calib=a.calib_images,
                      kd_alpha=a.kd_alpha, kd_temperature=a.kd_temperature)
    with _one_device(a, cfg.target) as device:
        cfg.device = device
        report = run_build(cfg)
    _emit_json(report, a.json)
    if a.json != "-":
        print(summary_table(report))
        print()
        print(verdict(report))
        print(f"report: {a.out}/report.md, {a.out}/report.json")
    search = report.get("search")
    if search and not search["met"]:
        spread = max((n or {}).get("spread", 1.0) for n in report["comparison"]["noise"].values())
        print(f"edgeprune: error: the final build measured {search['final_measured_ms']:.3f} ms, over the "
              f"{search['budget_ms']:.3f} ms budget (round-to-round spread {spread:.2f}x; the search's own check "
              f"measured {search['attempts'][-1]['measured_ms']:.3f} ms) (rerun on a quieter machine or with more "
              "--rounds, or tighten the budget)", file=sys.stderr)
        return 1
    return 0


@contextlib.contextmanager
def _one_device(a: argparse.Namespace, target: str):
    """The build's remote device (from --device or the profile's [device] table), connected, or None."""
    from edgeprune.errors import UserInputError
    from edgeprune.profiles import load_profile
    from edgeprune.remote.cli_glue import devices_from_args

    devices = devices_from_args(a, load_profile(target))
    if len(devices) > 1:
        raise UserInputError("build takes one --device", "compare several devices with 'edgeprune bench --device A --device B'")
    device = devices[0] if devices else None
    try:
        yield device
    finally:
        if device is not None:
            device.close()


def _emit_json(data, dest: str | None) -> None:
    if dest == "-":
        json.dump(data, sys.stdout, indent=2, default=str)
        print()
    elif dest:
        from pathlib import Path

        from edgeprune.targets.base import write_json_atomic

        write_json_atomic(Path(dest), data)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a baseline model from the zoo",
                       description="Train a zoo model on a dataset and write OUT/model.pt (architecture spec + "
                                   "state_dict, loads without pickle) and OUT/train.json (accuracy, history).")
    p.add_argument("--model", required=True, help="zoo model name or package.module:factory")
    p.add_argument("--epochs", type=float, default=1.0, help="training epochs (fractions allowed). Default: %(default)s")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--out", required=True, help="output folder (must not exist unless --force)")
    p.add_argument("--force", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--augment", action="store_true", help="random crop + flip (helps runs of many epochs)")
    _add_common_data(p)
    p.set_defaults(func=_cmd_train)


def _cmd_train(a: argparse.Namespace) -> int:
    from edgeprune.train_cmd import run_train

    result = run_train(a.model, a.data, a.out, epochs=a.epochs, lr=a.lr, batch_size=a.batch_size,
                       image_size=a.image_size, force=a.force, seed=a.seed, augment=a.augment,
                       progress=not a.no_progress)
    print(f"{result['model']} on {result['data']}: test top-1 {result['accuracy']:.4f} -> {a.out}/model.pt")
    return 0


def _add_targets(sub) -> None:
    p = sub.add_parser("targets", help="list target profiles and whether their runtime works here",
                       description="List every target profile (deploy/targets/*.toml), its runtime, precisions and "
                                   "channel multiple, and whether that runtime is available on this machine.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_targets)


def _cmd_targets(a: argparse.Namespace) -> int:
    from edgeprune.targets_cmd import list_targets, targets_table

    rows = list_targets()
    print(json.dumps(rows, indent=2) if a.json else targets_table(rows))
    return 0


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the built-in model zoo")
    p.set_defaults(func=_cmd_models)


def _cmd_models(a: argparse.Namespace) -> int:
    from edgeprune.models import MODEL_NAMES, default_input_size

    for name in MODEL_NAMES:
        print(f"{name:14s} default input {default_input_size(name)}x{default_input_size(name)}")
    return 0


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="compare runtimes and precisions on one model",
                       description="Compile MODEL (an .onnx file or a build folder) for every target x precision, "
                                   "check each against the fp32 reference on held-out data, measure the ones that "
                                   "pass interleaved at one thread count, and print one table.")
    p.add_argument("model", help="an .onnx file, or a build folder (uses its onnx/pruned.onnx)")
    p.add_argument("--targets", default="openvino,ncnn,mnn,onnxruntime",
                   help="comma-separated target profiles or runtime names. Default: %(default)s")
    p.add_argument("--precisions", default="fp32,fp16,int8", help="comma-separated. Default: %(default)s")
    p.add_argument("--threads", type=int, default=1, help="threads for every runtime. Default: %(default)s")
    p.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds. Default: %(default)s")
    p.add_argument("--min-seconds", type=float, default=2.0)
    p.add_argument("--out", help="keep the artifacts, bench.json/md/csv in this folder")
    _add_sample_flags(p)
    p.add_argument("--json", metavar="FILE", help="write the results as JSON ('-' for stdout)")
    p.add_argument("--csv", metavar="FILE", help="write the table as CSV")
    p.add_argument("--latency-only", action="store_true",
                   help="do not fail rows on the parity gates (for untrained models; parity numbers are still shown)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    _add_common_data(p)
    from edgeprune.remote.cli_glue import add_device_arguments

    add_device_arguments(p)
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(a: argparse.Namespace) -> int:
    from pathlib import Path

    from edgeprune.bench_cmd import BenchConfig, bench_csv, bench_table, run_bench
    from edgeprune.loading import check_out_dir

    if a.out:
        check_out_dir(a.out, a.force)
    cfg = BenchConfig(model=a.model, targets=[t for t in a.targets.split(",") if t],
                      precisions=[p for p in a.precisions.split(",") if p], data=a.data, out=a.out,
                      threads=a.threads, rounds=a.rounds, min_seconds=a.min_seconds, force=a.force,
                      progress=not a.no_progress, holdout=a.holdout_images, calib=a.calib_images,
                      latency_only=a.latency_only)
    from edgeprune.remote.cli_glue import devices_from_args

    cfg.devices = devices_from_args(a)
    try:
        report = run_bench(cfg)
    finally:
        for device in cfg.devices:
            device.close()
    _emit_json(report, a.json)
    if a.csv:
        Path(a.csv).write_text(bench_csv(report["rows"]))
    if a.json != "-":
        print(bench_table(report["rows"]))
    return 0


def _add_lut(sub) -> None:
    p = sub.add_parser("lut", help="measure a model's per-layer latency table on a target",
                       description="Measure, for every distinct layer of MODEL in its real context (spatial size, "
                                   "kernel, stride), latency over its channel counts in steps of the target's channel "
                                   "multiple, on the target's runtime. Rows are cached on disk "
                                   "($EDGEPRUNE_CACHE or ~/.cache/edgeprune/lut) and reused.")
    p.add_argument("--target", required=True)
    p.add_argument("--model", required=True, help="zoo model name")
    p.add_argument("--input-shape", help="N,C,H,W (default: 1,3,S,S with the model's default size)")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"])
    p.add_argument("--threads", type=int)
    p.add_argument("--in-stride", type=int, default=2,
                   help="measure every Nth in-channel step, interpolate between. Default: %(default)s")
    p.add_argument("--json", metavar="FILE", help="write the table as JSON ('-' for stdout)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_lut)


def _cmd_lut(a: argparse.Namespace) -> int:
    from edgeprune.lut_cmd import lut_table, run_lut

    result = run_lut(a.target, a.model, a.input_shape, a.precision, a.threads, a.num_classes, a.in_stride,
                     not a.no_progress)
    _emit_json(result, a.json)
    if a.json != "-":
        meta = result["meta"]
        print(lut_table(result))
        print(f"\n{meta['rows_measured']} rows measured ({meta['points_measured']} points), "
              f"{meta['rows_from_cache']} reused from {meta['cache_dir']}; {meta['sampling']}")
    return 0


def _add_prune(sub) -> None:
    p = sub.add_parser("prune", help="prune and fine-tune a model (no compile/measure)",
                       description="Prune a trained model by --ratio, --flops-target or a latency --budget-ms on "
                                   "--target, fine-tune it, and write OUT/pruned.pt and OUT/prune.json.")
    p.add_argument("--model", help="zoo model name or package.module:factory")
    p.add_argument("--weights", help="checkpoint from 'edgeprune train', or a state_dict file")
    p.add_argument("--out", required=True, help="output folder (must not exist unless --force)")
    p.add_argument("--target", default="local", help="target whose channel multiple (and latency, with --budget-ms) "
                                                     "to prune for. Default: %(default)s")
    _add_method_flags(p)
    p.add_argument("--ratio", type=float, default=0.5, help="share of prunable channels to remove. Default: %(default)s")
    p.add_argument("--budget-ms", dest="budget", metavar="MS", help="latency budget on --target (ms, or a share like 0.5x)")
    p.add_argument("--round-to", type=int, help="channel multiple; default: the target's")
    p.add_argument("--finetune-epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=0.01)
    _add_kd_flags(p)
    p.add_argument("--threads", type=int)
    p.add_argument("--force", action="store_true")
    p.add_argument("--trust-checkpoint", action="store_true")
    _add_common_data(p)
    p.set_defaults(func=_cmd_prune)


def _cmd_prune(a: argparse.Namespace) -> int:
    from edgeprune.build import BuildConfig
    from edgeprune.prune_cmd import run_prune

    cfg = BuildConfig(target=a.target, data=a.data, out=a.out, model=a.model, weights=a.weights, method=a.method,
                      ratio=a.ratio, round_to=a.round_to, finetune_epochs=a.finetune_epochs, lr=a.lr,
                      image_size=a.image_size, threads=a.threads, force=a.force, trust_checkpoint=a.trust_checkpoint,
                      progress=not a.no_progress, budget=a.budget, flops_target=a.flops_target,
                      method_options=dict(a.method_option), kd_alpha=a.kd_alpha, kd_temperature=a.kd_temperature)
    s = run_prune(cfg)
    acc, flops = s["accuracy"], s["flops"]
    print(f"{s['prune']['method']}: {s['prune']['channels_before']} -> {s['prune']['channels_after']} channels, "
          f"MACs x{flops['pruned'] / flops['baseline']:.2f}, top-1 {acc['baseline']:.4f} -> "
          f"{acc['before_finetune']:.4f} (pruned) -> {acc['after_finetune']:.4f} (fine-tuned); {a.out}/pruned.pt")
    return 0


def _add_device_check(sub) -> None:
    from edgeprune.remote.cli_glue import add_device_check

    add_device_check(sub)


COMMANDS: tuple[Callable, ...] = (_add_train, _add_prune, _add_build, _add_bench, _add_lut, _add_targets,
                                  _add_models, _add_device_check)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeprune",
        description="Prune a trained PyTorch CNN into the fastest model that still meets its accuracy bar "
                    "on a named edge target, measured on that target's real runtime.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"edgeprune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from edgeprune.interrupt import describe, signals_as_exceptions

    try:
        with signals_as_exceptions():  # SIGINT/SIGTERM/SIGHUP unwind like Ctrl-C (see edgeprune.interrupt)
            return args.func(args)
    except EdgepruneError as exc:
        print(f"edgeprune: error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        line, code = describe(exc)
        print(f"edgeprune: error: {line}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
