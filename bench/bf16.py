"""bf16 vs fp16 vs fp32 on OpenVINO's CPU plugin, measured interleaved in one run.

For each model (untrained weights: latency only), compile one OpenVINO artifact per
precision the CPU offers (fp16/bf16 only where OPTIMIZATION_CAPABILITIES lists them),
measure them interleaved (A B C A B C ...) in fresh processes at one thread, and write
the p50 latencies, their ratio to fp32 and the output agreement with fp32 to a Markdown
table. Usage: PYTHONPATH=$PWD python bench/bf16.py [--rounds 5] [--out bench/results/bf16.md]
"""
from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgeprune.export import export_onnx
from edgeprune.measure.protocol import MeasureSettings, measure_interleaved
from edgeprune.models import build_model
from edgeprune.targets import openvino as ov

MODELS = {"resnet20 1x1x28x28": ("resnet20", (1, 1, 28, 28)),
          "mobilenet_v2 1x3x224x224": ("mobilenet_v2", (1, 3, 224, 224))}
PROFILE = {"options": {"device": "CPU", "performance_hint": "LATENCY"}}


def _agreement(arts: dict[str, object], shape: tuple[int, ...], n: int = 32) -> dict[str, tuple[float, float]]:
    """Top-1 agreement and max relative logit difference of each precision vs fp32 on seeded inputs."""
    x = np.random.default_rng(0).standard_normal((n, *shape[1:])).astype(np.float32)
    outs = {p: np.concatenate([ov.load(a, 1).run(x[i:i + 1])[0] for i in range(n)]) for p, a in arts.items()}
    ref = outs["fp32"]
    return {p: (float((o.argmax(1) == ref.argmax(1)).mean()), float(np.abs(o - ref).max() / np.abs(ref).max()))
            for p, o in outs.items()}


def bench_model(label: str, name: str, shape: tuple[int, ...], work: Path, settings: MeasureSettings,
                rounds: int) -> list[str]:
    model = build_model(name, num_classes=10, in_channels=shape[1]).eval()
    onnx_path = work / f"{name}.onnx"
    export_onnx(model, shape, onnx_path)
    caps = ov.device_capabilities("CPU")["capabilities"]
    precisions = ["fp32"] + [p for p in ("fp16", "bf16") if p.upper() in caps]
    arts = {p: ov.compile(onnx_path, p, None, PROFILE, work / f"{name}-{p}") for p in precisions}
    executed = {p: ov.inspect(a)["precision"] for p, a in arts.items()}
    agree = _agreement(arts, shape)
    measured = measure_interleaved({p: a.path for p, a in arts.items()}, settings, rounds=rounds, progress=False)
    base = measured["fp32"]["p50_ms_median"]
    rows = []
    for p in precisions:
        m = measured[p]
        rows.append(f"| {label} | {p} | {executed[p]} | {m['p50_ms_median']:.3f} | {m['p50_ms_min']:.3f} | "
                    f"{m['p50_ms_median'] / base:.2f} | {agree[p][0]:.3f} | {agree[p][1]:.2e} |")
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-seconds", type=float, default=2.0)
    parser.add_argument("--out", default="bench/results/bf16.md")
    args = parser.parse_args(argv)
    settings = MeasureSettings(threads=1, min_seconds=args.min_seconds)
    caps = ov.device_capabilities("CPU")
    lines = [f"Device: {caps['name']}; OpenVINO {ov.versions()['openvino']}; OPTIMIZATION_CAPABILITIES: "
             f"{', '.join(caps['capabilities'])}. 1 thread, {args.rounds} interleaved rounds, fresh process each.",
             "",
             "| model | requested | executed (inspect) | p50 ms (median of rounds) | p50 ms (best round) | "
             "p50 / fp32 | top-1 agreement vs fp32 | max rel. logit diff vs fp32 |",
             "|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="edgeprune-bf16-") as tmp:
        for label, (name, shape) in MODELS.items():
            lines += bench_model(label, name, shape, Path(tmp), settings, args.rounds)
            print(lines[-1], file=sys.stderr)
    lines += ["", f"Command: `PYTHONPATH=$PWD python bench/bf16.py {shlex.join(argv)}`".replace(" `", " `", 1)]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
