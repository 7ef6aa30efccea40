"""Measure every channel variant of one layer signature, interleaved, in this fresh process.

Run as ``python -m edgeprune.measure.lut_worker --job JOB.json --out RESULT.json``.
A LUT row has tens of micro-models of a few microseconds each; one process per variant
would cost more in start-up than in measurement, so a row is one process: every variant is
compiled and loaded first, then timed in rounds (v1 v2 ... vn, v1 v2 ... vn, ...). Each timing is
the one timing loop whole models use too (``timing.time_runs``: warm-up by time, garbage collector
off, minimum runs and seconds, the same p50), with the job's ``settings`` (``MeasureSettings``,
by default ``TABLE_TIMING``). Each variant's figure is the minimum over rounds of its per-round p50 —
the statistic least moved by a noisy neighbour. Invariant: the result lists every requested point,
or the process exits non-zero with one line on stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from edgeprune.measure.settings import MeasureSettings
from edgeprune.measure.worker import ERROR_PREFIX, set_thread_env


def job_settings(job: dict[str, Any]) -> MeasureSettings:
    """The job's timing settings: its ``settings`` table, else the table defaults at its thread count."""
    if job.get("settings"):
        return MeasureSettings.from_dict({**job["settings"], "threads": int(job["threads"])})
    return MeasureSettings.for_table(int(job["threads"]))


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    from edgeprune.measure.lut import LayerSig, micro_onnx
    from edgeprune.measure.timing import time_runs
    from edgeprune.targets import require_runtime

    settings = job_settings(job)
    set_thread_env(settings.threads)
    mod = require_runtime(job["profile"]["runtime"])
    sig = LayerSig.from_dict(job["sig"])
    runners, inputs = [], []
    loops: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgeprune-lut-") as tmp:
        for i, (cin, cout) in enumerate(job["points"]):
            onnx_path = micro_onnx(sig, cin, cout, Path(tmp) / f"p{i}.onnx", with_sink=bool(job.get("sink")))
            shape = [1, cin] if sig.kind == "linear" else [1, cin, *sig.in_hw]
            calib = np.random.default_rng(i).standard_normal((64, *shape[1:])).astype(np.float32) \
                if job["precision"] == "int8" else None
            art = mod.compile(onnx_path, job["precision"], calib, job["profile"], Path(tmp) / f"a{i}")
            runners.append(mod.load(art, settings.threads))
            inputs.append(np.random.default_rng(i).standard_normal(shape).astype(np.float32))
        rounds: list[list[float]] = [[] for _ in job["points"]]
        for _ in range(int(job["rounds"])):
            for i, runner in enumerate(runners):
                timed = time_runs(lambda r=runner, x=inputs[i]: r.run(x), settings)
                rounds[i].append(timed["latency"]["p50_ms"])
                loops.append(timed["loop"])
    loop = {"settings": settings.timing(), "gc_disabled": all(lp["gc_disabled"] for lp in loops),
            "min_warmup_runs": min(lp["warmup_runs"] for lp in loops),
            "min_warmup_s": min(lp["warmup_s"] for lp in loops),
            "min_timed_runs": min(lp["timed_runs"] for lp in loops),
            "min_timed_s": min(lp["timed_s"] for lp in loops)}
    return {"points": [[cin, cout, min(r), r] for (cin, cout), r in zip(job["points"], rounds)], "loop": loop}


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
