"""MNN int8 calibration settings against the int8 parity gate, on one trained model.

Compiles the ONNX model with the MNN target at fp32 and at int8 for each setting (target-profile
``options`` for ``targets.mnn``: feature/weight quantize methods, ``int8_keep_input_format``,
``skip_quant_ops``; plus the number of calibration images), with calibration images drawn like
``edgeprune bench`` does (training images, seed 1), and reports top-1 agreement with the ONNX
Runtime fp32 reference and accuracy on the first 500 test images -- the numbers the int8 gate
(agreement >= 0.95, accuracy drop <= 0.02) judges -- and single-image latency (1 thread),
measured interleaved over rounds (median of per-round medians; read the ratio to fp32).
Usage: PYTHONPATH=$PWD python bench/mnn_int8.py MODEL.onnx [--settings FILE.json]
(FILE.json: a list of {"label": ..., "calib": N, "options": {...}}).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeprune.data import calibration_batch, load_dataset
from edgeprune.deploy_check import make_holdout
from edgeprune.errors import EdgepruneError
from edgeprune.export import onnx_outputs
from edgeprune.measure.parity import DEFAULT_GATES
from edgeprune.targets import mnn
from edgeprune.targets import onnx_input

OLD = {"int8_keep_input_format": True}
DEFAULT_SETTINGS = [
    {"label": "fp32", "precision": "fp32"},
    {"label": "KL / MAX_ABS, NCHW input (old default)", "calib": 300, "options": OLD},
    {"label": "KL / MAX_ABS, NCHW input, first conv + fc float", "calib": 300,
     "options": {**OLD, "skip_quant_ops": ["/conv1/Conv_output_0", "output__matmul_converted"]}},
    {"label": "KL / MAX_ABS, NCHW input", "calib": 1000, "options": OLD},
    {"label": "KL / ADMM, NCHW input", "calib": 300, "options": {**OLD, "weight_quantize_method": "ADMM"}},
    {"label": "KL / MAX_ABS, NC4HW4 input (new default)", "calib": 300, "options": {}},
    {"label": "KL / MAX_ABS, NC4HW4 input", "calib": 100, "options": {}},
    {"label": "KL / MAX_ABS, NC4HW4 input", "calib": 1000, "options": {}},
    {"label": "KL / MAX_ABS, NC4HW4 input, fc float", "calib": 300,
     "options": {"skip_quant_ops": ["output__matmul_converted"]}},
    {"label": "KL / ADMM, NC4HW4 input", "calib": 300, "options": {"weight_quantize_method": "ADMM"}},
    {"label": "ADMM / MAX_ABS, NC4HW4 input", "calib": 300, "options": {"feature_quantize_method": "ADMM"}},
    {"label": "EMA / MAX_ABS, NC4HW4 input", "calib": 300, "options": {"feature_quantize_method": "EMA"}},
]


def _latency_ms(runners: list, x: np.ndarray, rounds: int, iters: int) -> list[float]:
    """Median per-round single-image latency of each runner, rounds interleaved across runners."""
    per_round: list[list[float]] = [[] for _ in runners]
    for _ in range(rounds):
        for i, runner in enumerate(runners):
            runner.run(x)
            times = []
            for _ in range(iters):
                t0 = time.perf_counter()
                runner.run(x)
                times.append(time.perf_counter() - t0)
            per_round[i].append(float(np.median(times)) * 1e3)
    return [float(np.median(r)) for r in per_round]


def _row(setting, art, holdout, ref_acc, gate) -> dict:
    out = mnn.load(art, 1).run(holdout.x)[0].argmax(1)
    agree, acc = float((out == holdout.reference.argmax(1)).mean()), float((out == holdout.labels).mean())
    ok = agree >= gate["min_top1_agreement"] and ref_acc - acc <= gate["max_accuracy_drop"]
    return {"agree": agree, "acc": acc, "gate": "-" if setting.get("precision") == "fp32" else
            ("pass" if ok else "FAIL")}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--holdout", type=int, default=500)
    parser.add_argument("--settings", help="JSON file: a list of settings (default: the table in this file)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    settings = json.loads(Path(args.settings).read_text()) if args.settings else DEFAULT_SETTINGS
    shape = onnx_input.read(args.model).input_shape
    test = load_dataset(args.data, "test", image_size=shape[2], channels=shape[1])
    train = load_dataset(args.data, "train", image_size=shape[2], channels=shape[1])
    holdout = make_holdout(test, args.holdout, lambda x: onnx_outputs(Path(args.model), x))
    ref_acc = float((holdout.reference.argmax(1) == holdout.labels).mean())
    gate = DEFAULT_GATES["int8"]
    rows, arts = [], []
    with tempfile.TemporaryDirectory(prefix="edgeprune-mnnint8-") as tmp:
        for i, setting in enumerate(settings):
            precision = setting.get("precision", "int8")
            calib = calibration_batch(train, setting["calib"], seed=1) if precision == "int8" else None
            profile = {"options": setting.get("options", {})}
            try:
                art = mnn.compile(args.model, precision, calib, profile, Path(tmp) / f"s{i}")
            except EdgepruneError as exc:
                rows.append({**setting, "failed": exc.one_line()})
                continue
            rows.append({**setting, **_row(setting, art, holdout, ref_acc, gate)})
            arts.append((rows[-1], art))
            print(rows[-1], file=sys.stderr)
        runners = [mnn.load(art, 1) for _, art in arts]
        for (row, _), ms in zip(arts, _latency_ms(runners, holdout.x[:1], args.rounds, args.iters)):
            row["ms"] = ms
    base = next((r["ms"] for r in rows if r.get("precision") == "fp32" and "ms" in r), None)
    lines = [f"Model {args.model}; reference (ONNX Runtime fp32) accuracy {ref_acc:.3f} on {len(holdout.x)} test "
             f"images; gate: top-1 agreement >= {gate['min_top1_agreement']}, accuracy drop <= "
             f"{gate['max_accuracy_drop']}; MNN {mnn.versions()['mnn']}; latency: 1 image, 1 thread, median of "
             f"{args.rounds} interleaved rounds x {args.iters} runs.", "",
             "| setting | calibration images | top-1 agreement | accuracy | int8 gate | p50 ms | / fp32 |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['label']} | {r.get('calib', '-')} | - | - | failed: {r['failed']} | - | - |")
            continue
        ratio = f"{r['ms'] / base:.2f}" if base else "-"
        lines.append(f"| {r['label']} | {r.get('calib', '-')} | {r['agree']:.3f} | {r['acc']:.3f} | {r['gate']} | "
                     f"{r['ms']:.4f} | {ratio} |")
    lines += ["", f"Command: `PYTHONPATH=$PWD python bench/mnn_int8.py {shlex.join(argv)}`"]
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
