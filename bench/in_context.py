"""Where does a whole model spend the time its latency table does not predict? Each layer's time inside the
model next to the table's row for it (MNN and OpenVINO).

The latency table times every layer alone, as a micro-model run in a loop, where the layer's weights stay in the
CPU's caches from one run to the next. Inside a whole model each layer runs after all the others, whose weights
and activations have passed through the same caches. This script shows how far apart the two are, layer by
layer, on a stored ``bench/predictor_accuracy.py`` case of an MNN (arm64-mnn) or OpenVINO (x86) target:

1. for the chosen calibration models of the case (``--models``: the unpruned model and the uniform cuts by
   default), compile the model as the run did, time whole inferences, then time every op inside the model (MNN:
   its per-op callbacks; OpenVINO: the plugin's own per-node counters, ``PERF_COUNT``), median over
   ``--op-runs`` inferences, and print per layer: the table's row, the time inside the model and their ratio
   (OpenVINO's rows are net of the identity micro-model, MNN's raw; ops are matched to layers by their ONNX scope);
2. with ``--memory`` (MNN): for every calibration model and variant of the run, MNN's session memory (the weights
   as the session holds them, after MNN's own transforms such as Winograd, plus the activation buffers) next to its
   parameter count and its measured / raw-table-sum ratio, sorted by memory.

It measures nothing for the table (rows come from ``--cache``, the cache of the original run; a missing row
stops it) but does time whole models and ops: run it alone, on the machine of the run. The numbers are a
diagnosis, not a benchmark: one process, no interleaving; MNN's callbacks add a few microseconds per op.
ncnn has no per-layer timing in its Python wheel.

Usage: python bench/in_context.py --run bench/results/predictor_accuracy_s34/resnet18_96_mnn_raw.json
           --cache ~/.cache/edgeprune [--models unpruned,uniform-0.25,uniform-0.5] [--memory] [--out FILE.md]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import predictor_accuracy as pa  # noqa: E402  (bench/ sibling: the run's models, compile path and cached table)


def layer_of(op_name: str, layer_names: list[str]) -> str | None:
    """The plan layer an op belongs to, from its ONNX scope: MNN's ``/layer3/layer3.0/downsample/downsample.0/
    Conv_output_0`` and OpenVINO's ``/layer3/layer3.0/downsample/downsample.0/Conv/WithoutBiases`` are both
    ``layer3.0.downsample.0`` (the last component and the ONNX op types before it, capitalised, are not scope; every
    dot-segment of the layer's name appears in order in the scope, which starts at the layer's first segment); the
    most specific match wins."""
    comps = [c for c in op_name.strip("/").split("/")[:-1] if c]
    while comps and re.fullmatch(r"[A-Z][A-Za-z0-9]*", comps[-1]):
        comps.pop()
    if not comps:
        return None
    segs = [s for c in comps for s in c.split(".")]
    best = None
    for name in layer_names:
        want = name.split(".")
        if comps[0].split(".")[0] != want[0] or want[-1] != comps[-1].split(".")[-1]:
            continue
        it = iter(segs)
        if all(w in it for w in want) and (best is None or len(want) > len(best.split("."))):
            best = name
    return best


def _median_ms(fn, warmup: int, runs: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


class Session:
    """A compiled artifact loaded as its runtime loads it (``targets.<runtime>.load``); OpenVINO a second time with
    the plugin's per-node counters for the ops (they add a little to every run), MNN's ops timed by callbacks."""

    def __init__(self, runtime: str, art: Path, x: np.ndarray):
        from edgeprune.targets import require_runtime

        mod = require_runtime(runtime)
        self.x = x
        self.plain = mod.load(art, pa.THREADS)
        self.counted = mod.load(art, pa.THREADS, perf_count=True) if runtime == "openvino" else self.plain

    def memory_mb(self) -> float | None:
        return self.plain.memory_mb() if hasattr(self.plain, "memory_mb") else None

    def whole_ms(self, warmup: int, runs: int) -> float:
        return _median_ms(lambda: self.plain.run(self.x), warmup, runs)

    def op_ms(self, runs: int) -> dict[str, float]:
        """Op name -> median ms over ``runs`` inferences (names in execution order)."""
        acc: dict[str, list[float]] = {}
        for _ in range(runs):
            for name, ms in self.counted.op_ms(self.x).items():
                acc.setdefault(name, []).append(ms)
        return {name: statistics.median(v) for name, v in acc.items()}


RUNTIMES = ("mnn", "openvino")  # the runtimes that time ops inside a whole model


def compiled(hs, counts: list[int], dest: Path) -> Path:
    ones = [np.ones(w) for w in hs.widths]
    model = hs.model if list(counts) == list(hs.widths) else hs.prune_counts(counts, ones)
    return Path(pa.compile_model(hs, model, dest))


def per_layer(hs, case: dict, names: list[str], args) -> list[str]:
    models = {k: v["counts"] for k, v in case["calibration"]["calibration"]["models"].items()}
    pred = hs.predictor
    layer_names = [layer.name for layer in pred.layers]
    owner = {m: layer.name for layer in pred.layers for m in (layer.members or (layer.name,))}  # fused units' layers
    x = np.random.default_rng(0).standard_normal(case["input_shape"]).astype(np.float32)
    out = []
    for name in names:
        if name not in models:
            raise SystemExit(f"in_context: no calibration model {name!r} in the run (it has: {', '.join(models)})")
        counts = models[name]
        with tempfile.TemporaryDirectory(prefix="edgeprune-incontext-") as tmp:
            pa.log(f"{name}: compiling and timing")
            sess = Session(case["runtime"], compiled(hs, counts, Path(tmp)), x)
            whole = sess.whole_ms(args.warmup, args.runs)
            ops = sess.op_ms(args.op_runs)
            mem = sess.memory_mb()
        rows = dict(zip(layer_names, pred.layer_ms(counts)))
        inside: dict[str, float] = {}
        other = 0.0
        for op, ms in ops.items():
            layer = layer_of(op, list(owner))
            if layer is None:
                other += ms
            else:
                inside[owner[layer]] = inside.get(owner[layer], 0.0) + ms
        raw = sum(rows.values())
        out += [f"### {name} {counts}", "",
                f"whole model {whole:.3f} ms (median of {args.runs}); its ops timed one by one {sum(ops.values()):.3f} "
                f"ms; the table's raw sum {raw:.3f} ms (whole / raw {whole / raw:.2f})"
                + (f"; session memory {mem:.1f} MB" if mem is not None else ""), "",
                "| layer | table row ms | inside the model ms | inside / row |", "|---|---|---|---|"]
        for layer in layer_names:
            row, got = rows[layer], inside.get(layer)
            out.append(f"| {layer} | {row:.3f} | " + (f"{got:.3f} | {got / row:.2f} |" if got is not None and row > 0
                                                        else "— | |"))
        out += [f"| ops of no layer (layout, pooling, adds) | | {other:.3f} | |", ""]
    return out


def memory_table(hs, case: dict) -> list[str]:
    items = [("calibration", m["counts"], m["ms"]) for m in case["calibration"]["measured"]]
    items += [("variant", v["counts"], v["measured_ms"]) for v in case["variants"]]
    x = np.random.default_rng(0).standard_normal(case["input_shape"]).astype(np.float32)
    rows = []
    for i, (kind, counts, ms) in enumerate(items):
        pa.log(f"memory {i + 1}/{len(items)}")
        with tempfile.TemporaryDirectory(prefix="edgeprune-incontext-") as tmp:
            mem = Session("mnn", compiled(hs, counts, Path(tmp)), x).memory_mb()
        raw = hs.predictor.raw_ms(counts)
        rows.append((mem, kind, hs.predictor.weights_m(counts), raw, ms))
    out = ["| session memory MB | model | million weights | raw table sum ms | measured ms | measured / raw |",
           "|---|---|---|---|---|---|"]
    out += [f"| {mem:.1f} | {kind} | {w:.2f} | {raw:.3f} | {ms:.3f} | {ms / raw:.2f} |"
            for mem, kind, w, raw, ms in sorted(rows)]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True,
                    help="a predictor_accuracy.json whose first case is an MNN (arm64-mnn) or OpenVINO (x86) target")
    ap.add_argument("--cache", default=str(pa.DEFAULT_CACHE),
                    help="the latency-table cache of that run (EDGEPRUNE_CACHE); rows are read, never measured")
    ap.add_argument("--models", default="unpruned,uniform-0.25,uniform-0.5",
                    help="calibration models of the run to time layer by layer, comma-separated (empty: none)")
    ap.add_argument("--runs", type=int, default=200, help="timed whole inferences (after --warmup)")
    ap.add_argument("--warmup", type=int, default=20, help="untimed whole inferences first")
    ap.add_argument("--op-runs", type=int, default=50, help="inferences timed op by op (median per op)")
    ap.add_argument("--memory", action="store_true",
                    help="also list every calibration model's and variant's session memory with its measured / raw ratio")
    ap.add_argument("--out", help="also write the markdown to this file")
    args = ap.parse_args()
    os.environ["EDGEPRUNE_CACHE"] = args.cache
    try:
        case = json.loads(Path(args.run).read_text())["cases"][0]
    except (OSError, ValueError, KeyError, IndexError) as exc:
        print(f"in_context: cannot read a case from {args.run} ({exc}); pass a predictor_accuracy.json",
              file=sys.stderr)
        return 2
    if case["runtime"] not in RUNTIMES:
        print(f"in_context: the run's runtime is {case['runtime']}; per-op times come from MNN's callbacks and "
              "OpenVINO's counters only (pass an arm64-mnn or x86 run)", file=sys.stderr)
        return 2
    if args.memory and case["runtime"] != "mnn":
        print("in_context: --memory reads MNN's session memory; this run is not MNN's (drop --memory)",
              file=sys.stderr)
        return 2
    try:
        hs = pa.cached_search(case)
    except pa.TableNotCached as exc:
        print(f"in_context: {exc}", file=sys.stderr)
        return 2
    lines = [f"# {case['model']} {case['input_shape']} on {case['target']} ({case['runtime']}): inside the model vs "
             f"the table", "", f"run: {args.run}", ""]
    names = [n for n in args.models.split(",") if n]
    lines += per_layer(hs, case, names, args)
    if args.memory:
        lines += ["## Session memory and the measured / raw ratio, every model of the run", ""] + memory_table(hs, case)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
