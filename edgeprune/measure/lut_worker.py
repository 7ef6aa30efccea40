"""Measure every channel variant of one layer signature, interleaved, in this fresh process.

Run as ``python -m edgeprune.measure.lut_worker --job JOB.json --out RESULT.json``.
A LUT row has tens of micro-models of a few microseconds each; one process per variant
would cost more in start-up than in measurement, so a row is one process: every variant is
compiled and loaded first, then timed in rounds (v1 v2 ... vn, v1 v2 ... vn, ...), and each
variant's figure is the minimum over rounds of its per-round median — the statistic least
moved by a noisy neighbour. Invariant: the result lists every requested point, or the
process exits non-zero with one line on stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edgeprune.measure.worker import ERROR_PREFIX, set_thread_env


def _time_point(runner: Any, x: Any, iters: int, min_s: float) -> float:
    for _ in range(3):
        runner.run(x)
    times = []
    start = time.perf_counter()
    while len(times) < iters or time.perf_counter() - start < min_s:
        t0 = time.perf_counter_ns()
        runner.run(x)
        times.append((time.perf_counter_ns() - t0) / 1e6)
    times.sort()
    return times[len(times) // 2]


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    from edgeprune.measure.lut import LayerSig, micro_onnx
    from edgeprune.targets import require_runtime

    set_thread_env(int(job["threads"]))
    mod = require_runtime(job["profile"]["runtime"])
    sig = LayerSig.from_dict(job["sig"])
    runners, inputs = [], []
    with tempfile.TemporaryDirectory(prefix="edgeprune-lut-") as tmp:
        for i, (cin, cout) in enumerate(job["points"]):
            onnx_path = micro_onnx(sig, cin, cout, Path(tmp) / f"p{i}.onnx")
            shape = [1, cin] if sig.kind == "linear" else [1, cin, *sig.in_hw]
            calib = np.random.default_rng(i).standard_normal((64, *shape[1:])).astype(np.float32) \
                if job["precision"] == "int8" else None
            art = mod.compile(onnx_path, job["precision"], calib, job["profile"], Path(tmp) / f"a{i}")
            runners.append(mod.load(art, int(job["threads"])))
            inputs.append(np.random.default_rng(i).standard_normal(shape).astype(np.float32))
        rounds: list[list[float]] = [[] for _ in job["points"]]
        for _ in range(int(job["rounds"])):
            for i, runner in enumerate(runners):
                rounds[i].append(_time_point(runner, inputs[i], int(job["iters"]), float(job["min_seconds"])))
    return {"points": [[cin, cout, min(r), r] for (cin, cout), r in zip(job["points"], rounds)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgeprune.measure.lut_worker")
    parser.add_argument("--job", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    job = json.loads(Path(args.job).read_text())
    set_thread_env(int(job["threads"]))
    try:
        result = run_job(job)
    except Exception as exc:  # one line for the parent, whatever the runtime raised
        print(ERROR_PREFIX + str(exc).strip().splitlines()[0] if str(exc).strip() else ERROR_PREFIX + repr(exc),
              file=sys.stderr)
        return 1
    from edgeprune.targets.base import write_json_atomic

    write_json_atomic(Path(args.out), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
