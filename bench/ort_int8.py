"""Why ONNX Runtime's TensorRT-shaped int8 graph is slower than fp32 on this CPU, measured.

Quantizes one ONNX model several ways with ORT's own quantizer (same MinMax calibration,
same images), then times every variant interleaved in one process (round r: A B C ...,
each a p50 over ``--iters`` single-image runs at 1 intra-op thread, graph optimization
"all"), and reads from ORT's session profiler which kernels ran and where the time went.
Variants: the exported fp32 graph; QDQ with int8 symmetric activations + per-channel
int8 weights (what TensorRT takes, ``targets.qdq``); QDQ with uint8 asymmetric
activations (per-channel and per-tensor weights), and the per-channel one with 7-bit weights (ORT's
``reduce_range``, which the ONNX Runtime target uses on x86 CPUs without VNNI); QOperator (QLinearConv) u8/s8.
Usage: PYTHONPATH=$PWD python bench/ort_int8.py MODEL.onnx [--rounds 7] [--out FILE]
"""
from __future__ import annotations

import argparse
import gzip
import json
import shlex
import statistics
import struct
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

MINI = Path(__file__).resolve().parent.parent / "tests" / "data" / "fashion-mnist-mini"
# name -> (format, activation type, symmetric activations, per-channel weights, 7-bit weights)
VARIANTS = {
    "qdq s8s8 sym per-channel (TensorRT-shaped)": (QuantFormat.QDQ, QuantType.QInt8, True, True, False),
    "qdq s8s8 sym per-tensor": (QuantFormat.QDQ, QuantType.QInt8, True, False, False),
    "qdq u8s8 asym per-channel": (QuantFormat.QDQ, QuantType.QUInt8, False, True, False),
    "qdq u8s8 asym per-channel, 7-bit weights (reduce_range)": (QuantFormat.QDQ, QuantType.QUInt8, False, True, True),
    "qdq u8s8 asym per-tensor": (QuantFormat.QDQ, QuantType.QUInt8, False, False, False),
    "qoperator u8s8 asym per-channel": (QuantFormat.QOperator, QuantType.QUInt8, False, True, False),
}


class _Reader:
    def __init__(self, name: str, x: np.ndarray):
        self._it = iter([{name: x[i:i + 1]} for i in range(len(x))])

    def get_next(self):
        return next(self._it, None)


def _images(shape: list[int], n: int) -> np.ndarray:
    if shape[1:] == [1, 28, 28] and (MINI / "train-images-idx3-ubyte.gz").is_file():
        data = gzip.decompress((MINI / "train-images-idx3-ubyte.gz").read_bytes())
        count, rows, cols = struct.unpack(">3I", data[4:16])
        img = np.frombuffer(data, np.uint8, offset=16).reshape(count, 1, rows, cols)[:n]
        return (img.astype(np.float32) / 127.5 - 1.0).astype(np.float32)
    return np.random.default_rng(1).standard_normal((n, *shape[1:])).astype(np.float32)


def _quantize(pre: Path, out: Path, calib: np.ndarray, name: str, variant: tuple) -> None:
    fmt, act, sym, per_channel, reduce_range = variant
    quantize_static(str(pre), str(out), _Reader(name, calib), quant_format=fmt, per_channel=per_channel,
                    reduce_range=reduce_range,
                    activation_type=act, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                    op_types_to_quantize=["Conv", "Gemm", "MatMul", "Add"],
                    extra_options={"ActivationSymmetric": sym, "WeightSymmetric": True,
                                   "QDQKeepRemovableActivations": sym})


def _session(path: Path, profile: bool = False) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.enable_profiling = profile
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _kernels(path: Path, name: str, x: np.ndarray, iters: int = 200) -> tuple[str, str]:
    """Kernel op types ORT ran and the top time shares, from its session profiler."""
    sess = _session(path, profile=True)
    for _ in range(iters):
        sess.run(None, {name: x})
    events = json.loads(Path(sess.end_profiling()).read_text())
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    ops: Counter[str] = Counter()
    time_by: Counter[str] = Counter()
    for e in nodes:
        op = e["args"]["op_name"]
        time_by[op] += e["dur"]
    for e in nodes[: len(nodes) // iters]:
        ops[e["args"]["op_name"]] += 1
    total = sum(time_by.values()) or 1
    shares = ", ".join(f"{op} {100 * t / total:.0f}%" for op, t in time_by.most_common(4))
    return ", ".join(f"{op}x{n}" for op, n in sorted(ops.items())), shares


def _p50_ms(sess: ort.InferenceSession, name: str, x: np.ndarray, iters: int) -> float:
    for _ in range(20):
        sess.run(None, {name: x})
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def run(model: Path, rounds: int, iters: int, work: Path) -> tuple[list[str], dict]:
    pre = work / "pre.onnx"
    quant_pre_process(str(model), str(pre), skip_symbolic_shape=True)
    probe = _session(pre)
    name, shape = probe.get_inputs()[0].name, list(probe.get_inputs()[0].shape)
    calib = _images(shape, 128)
    paths = {"fp32": pre}
    for label, variant in VARIANTS.items():
        paths[label] = work / f"{len(paths)}.onnx"
        _quantize(pre, paths[label], calib, name, variant)
    x = calib[:1]
    sessions = {k: _session(p) for k, p in paths.items()}
    ref = np.concatenate([sessions["fp32"].run(None, {name: calib[i:i + 1]})[0] for i in range(64)])
    p50s: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(rounds):
        for k, sess in sessions.items():
            p50s[k].append(_p50_ms(sess, name, x, iters))
    base = statistics.median(p50s["fp32"])
    rows = []
    for k, path in paths.items():
        out = np.concatenate([sessions[k].run(None, {name: calib[i:i + 1]})[0] for i in range(64)])
        agree = float((out.argmax(1) == ref.argmax(1)).mean())
        kernels, shares = _kernels(path, name, x)
        med = statistics.median(p50s[k])
        rows.append(f"| {k} | {med:.4f} | {min(p50s[k]):.4f} | {med / base:.2f} | {agree:.3f} | {kernels} | {shares} |")
    return rows, {k: v for k, v in p50s.items()}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgeprune-ortint8-") as tmp:
        rows, raw = run(Path(args.model), args.rounds, args.iters, Path(tmp))
    lines = [f"onnxruntime {ort.__version__}, CPU provider, 1 thread, level 'all'; {args.rounds} interleaved rounds "
             f"of {args.iters} runs; model {args.model}", "",
             "| variant | p50 ms (median of rounds) | p50 ms (best round) | / fp32 | top-1 agreement vs fp32 "
             "(64 imgs) | kernels ORT ran | time share by kernel |", "|---|---|---|---|---|---|---|", *rows, "",
             f"Command: `PYTHONPATH=$PWD python bench/ort_int8.py {shlex.join(argv)}`"]
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
