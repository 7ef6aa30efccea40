"""MNN int8 calibration settings against the int8 parity gate, on one trained model.

Compiles the ONNX model with the MNN target at fp32 and at int8 for each (feature, weight)
quantize method pair (``targets.mnn_tools``: KL / ADMM / EMA features, MAX_ABS / ADMM
weights), with the calibration images ``edgeprune bench`` uses (300 training images,
seed 1), and reports top-1 agreement with the ONNX Runtime fp32 reference and accuracy
on the first 500 test images -- the numbers the int8 gate (agreement >= 0.95, accuracy
drop <= 0.02) judges. Usage: PYTHONPATH=$PWD python bench/mnn_int8.py MODEL.onnx [--calib 300]
"""
from __future__ import annotations

import argparse
import itertools
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgeprune.data import calibration_batch, load_dataset
from edgeprune.deploy_check import make_holdout
from edgeprune.errors import EdgepruneError
from edgeprune.export import onnx_outputs
from edgeprune.measure.parity import DEFAULT_GATES
from edgeprune.targets import mnn
from edgeprune.targets import onnx_input


def _score(art, holdout) -> tuple[float, float]:
    out = mnn.load(art, 1).run(holdout.x)[0]
    agree = float((out.argmax(1) == holdout.reference.argmax(1)).mean())
    return agree, float((out.argmax(1) == holdout.labels).mean())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--calib", type=int, default=300)
    parser.add_argument("--holdout", type=int, default=500)
    parser.add_argument("--methods", default=",".join(f"{f}/{w}" for f, w in itertools.product(
        ("KL", "ADMM", "EMA"), ("MAX_ABS", "ADMM"))), help="feature/weight pairs, comma-separated")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    shape = onnx_input.read(args.model).input_shape
    test = load_dataset(args.data, "test", image_size=shape[2], channels=shape[1])
    train = load_dataset(args.data, "train", image_size=shape[2], channels=shape[1])
    holdout = make_holdout(test, args.holdout, lambda x: onnx_outputs(Path(args.model), x))
    calib = calibration_batch(train, args.calib, seed=1)
    ref_acc = float((holdout.reference.argmax(1) == holdout.labels).mean())
    gate = DEFAULT_GATES["int8"]
    rows = [f"| fp32 (mnn) | - | {{}} | {{}} | - |"]
    with tempfile.TemporaryDirectory(prefix="edgeprune-mnnint8-") as tmp:
        fp32 = mnn.compile(args.model, "fp32", None, {"options": {}}, Path(tmp) / "fp32")
        rows[0] = rows[0].format(*(f"{v:.3f}" for v in _score(fp32, holdout)))
        for pair in args.methods.split(","):
            feature, weight = pair.split("/")
            profile = {"options": {"feature_quantize_method": feature, "weight_quantize_method": weight}}
            try:
                art = mnn.compile(args.model, "int8", calib, profile, Path(tmp) / f"{feature}-{weight}")
            except EdgepruneError as exc:
                rows.append(f"| {feature} / {weight} | {len(calib)} | - | - | failed: {exc.one_line()} |")
                continue
            agree, acc = _score(art, holdout)
            ok = agree >= gate["min_top1_agreement"] and ref_acc - acc <= gate["max_accuracy_drop"]
            rows.append(f"| {feature} / {weight} | {len(calib)} | {agree:.3f} | {acc:.3f} | {'pass' if ok else 'FAIL'} |")
            print(rows[-1], file=sys.stderr)
    lines = [f"Model {args.model}; reference (ONNX Runtime fp32) accuracy {ref_acc:.3f} on {len(holdout.x)} test "
             f"images; gate: top-1 agreement >= {gate['min_top1_agreement']}, accuracy drop <= "
             f"{gate['max_accuracy_drop']}; MNN {mnn.versions()['mnn']}.", "",
             "| features / weights | calibration images | top-1 agreement | accuracy | int8 gate |",
             "|---|---|---|---|---|", *rows, "",
             f"Command: `PYTHONPATH=$PWD python bench/mnn_int8.py {shlex.join(argv)}`"]
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
