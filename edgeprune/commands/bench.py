"""``edgeprune bench``: one model across runtimes and precisions, in one table."""
from __future__ import annotations

import argparse

from edgeprune.commands._args import add_data, add_json, add_measure, add_samples, comma_list
from edgeprune.commands._device import add_device_arguments
from edgeprune.commands._output import check_outputs, emit_json, write_text_atomic


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help="compare runtimes and precisions on one model",
                       description="Compile MODEL (an .onnx file or a build folder) for every target x precision, "
                                   "check each against the fp32 reference on held-out data, measure the ones that "
                                   "pass interleaved at one thread count, and print one table.")
    p.add_argument("model", help="an .onnx file, or a build folder (uses its onnx/pruned.onnx)")
    p.add_argument("--targets", type=comma_list, default="openvino,ncnn,mnn,onnxruntime",
                   help="comma-separated target profiles or runtime names. Default: %(default)s")
    p.add_argument("--precisions", type=comma_list, default="fp32,fp16,int8",
                   help="comma-separated. Default: %(default)s")
    add_measure(p)
    p.set_defaults(threads=1)
    p.add_argument("--out", help="keep the artifacts, bench.json/md/csv in this folder")
    p.add_argument("--force", action="store_true", help="replace --out if it is an earlier edgeprune output")
    add_samples(p)
    add_json(p, "the results")
    p.add_argument("--csv", metavar="FILE", help="write the table as CSV")
    p.add_argument("--latency-only", action="store_true",
                   help="do not fail rows on the parity gates (for untrained models; parity numbers are still shown)")
    add_data(p)
    add_device_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    from edgeprune.bench import BenchConfig, bench_csv, bench_table, run_bench
    from edgeprune.commands._device import devices_from_args
    from edgeprune.loading import check_out_dir

    check_outputs(args)
    if args.out:
        check_out_dir(args.out, args.force)
    cfg = BenchConfig(model=args.model, targets=args.targets, precisions=args.precisions, data=args.data,
                      out=args.out, threads=args.threads, rounds=args.rounds, max_rounds=args.max_rounds,
                      confidence=args.confidence, min_seconds=args.min_seconds,
                      force=args.force, progress=not args.no_progress, holdout=args.holdout, calib=args.calib,
                      latency_only=args.latency_only)
    cfg.devices = devices_from_args(args)
    try:
        report = run_bench(cfg)
    finally:
        for device in cfg.devices:
            device.close()
    emit_json(report, args.json)
    if args.csv:
        write_text_atomic(args.csv, bench_csv(report["rows"]))
    if args.json != "-":
        print(bench_table(report["rows"]))
        if report.get("comparison_sentence"):
            print(report["comparison_sentence"])
    return 0
