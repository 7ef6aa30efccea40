"""Do edgeprune's latency figures agree with OpenVINO's own benchmark_app on the same artifact?

For each model: compile to OpenVINO fp32, then alternate (A B A B ...) edgeprune's measurement
(fresh process, warm-up by time, per-run timing) and `benchmark_app` with the same settings
(1 stream, 1 infer request, sync API, same threads, f32 inference precision). Prints each
round's p50 and benchmark_app's median, and the ratios of their medians and of their minima over
rounds (the minimum is the figure least moved by a noisy neighbour on a shared machine).

Usage: python bench/openvino_fidelity.py [--models resnet20,mobilenet_v2] [--rounds 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from edgeprune.export import export_onnx
from edgeprune.measure.protocol import MeasureSettings, measure
from edgeprune.models import build_model
from edgeprune.profiles import load_profile
from edgeprune.targets import require_runtime

SHAPES = {"resnet20": (1, 1, 28, 28), "resnet56": (1, 1, 28, 28), "mobilenet_v2": (1, 3, 224, 224),
          "resnet18": (1, 3, 224, 224), "vgg16_bn": (1, 1, 28, 28)}


def benchmark_app_median(xml: Path, threads: int, seconds: int) -> float:
    exe = shutil.which("benchmark_app") or str(Path(sys.executable).parent / "benchmark_app")
    cmd = [exe, "-m", str(xml), "-d", "CPU", "-hint", "none", "-nstreams", "1", "-nireq", "1", "-api", "sync",
           "-nthreads", str(threads), "-infer_precision", "f32", "-t", str(seconds)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    match = re.search(r"Median:\s+([0-9.]+) (ms|us)", out)
    if not match:
        raise RuntimeError("benchmark_app printed no median latency:\n" + out[-2000:])
    return float(match.group(1)) / (1000.0 if match.group(2) == "us" else 1.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet20,mobilenet_v2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=int, default=3)
    args = ap.parse_args()
    ov = require_runtime("openvino")
    profile = load_profile("x86")
    print(f"| model | round | edgeprune p50 ms | benchmark_app median ms | ratio |\n|---|---|---|---|---|")
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            shape = SHAPES[name]
            model = build_model(name, num_classes=10, in_channels=shape[1]).eval()
            onnx_path = Path(export_onnx(model, shape, Path(tmp) / f"{name}.onnx")["path"])
            art = ov.compile(onnx_path, "fp32", None, profile, Path(tmp) / name)
            ours, theirs = [], []
            settings = MeasureSettings(threads=args.threads, warmup_s=1.0, min_seconds=float(args.seconds))
            for r in range(args.rounds):
                ours.append(measure(art.path, settings)["latency"]["p50_ms"])
                theirs.append(benchmark_app_median(art.file("model"), args.threads, args.seconds))
                print(f"| {name} | {r + 1} | {ours[-1]:.4f} | {theirs[-1]:.4f} | {ours[-1] / theirs[-1]:.3f} |")
            summary.append((name, statistics.median(ours), statistics.median(theirs), min(ours), min(theirs)))
    print("\n| model | edgeprune p50 ms (median / min of rounds) | benchmark_app median ms (median / min) "
          "| ratio of medians | ratio of minima (within 5%?) |\n|---|---|---|---|---|")
    for name, a, b, amin, bmin in summary:
        ok = "yes" if abs(amin / bmin - 1) <= 0.05 else "NO"
        print(f"| {name} | {a:.4f} / {amin:.4f} | {b:.4f} / {bmin:.4f} | {a / b:.3f} | {amin / bmin:.3f} ({ok}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
