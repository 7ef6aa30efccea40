"""One measurement of one compiled artifact, in this (fresh) process.

Run as ``python -m edgeprune.measure.worker --artifact DIR --threads N [--out FILE]``.

Invariant: a worker process measures exactly one artifact, so its peak resident
memory (VmHWM) belongs to that artifact plus the interpreter and the runtime, and
no other model's kernels, caches or allocations are warm. The thread-count
environment variables (OMP_NUM_THREADS, MKL_NUM_THREADS, ...) are set before
numpy or any runtime is imported, which is why this module imports only the
standard library at the top. Order of events: import the runtime, load the
artifact (timed), build one seeded random float32 input of the artifact's input
shape, warm up by time (>= warmup_s and >= 5 runs), then time each ``run`` with
``perf_counter_ns`` until both >= min_iters runs and >= min_seconds have passed,
or max_seconds is reached (at least one timed run). The garbage collector is
off during the timed runs (as in ``timeit``). A worker never outlives the process that
started it (``die_with_parent``; the parent also kills its process group, see ``interrupt``). The result is one JSON object
(see ``measure_artifact``); a failure is one line on stderr and a non-zero exit.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                   "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "TBB_NUM_THREADS")
MIN_WARMUP_RUNS = 5
ERROR_PREFIX = "edgeprune-measure: error: "  # starts the one stderr line of a failure


def set_thread_env(threads: int) -> None:
    """Pin math-library thread pools to ``threads`` (0 = leave the runtime's default)."""
    if threads > 0:
        for var in THREAD_ENV_VARS:
            os.environ[var] = str(threads)


def _warm_up(run: Callable[[], Any], warmup_s: float) -> tuple[int, float]:
    """Run until both ``warmup_s`` seconds and MIN_WARMUP_RUNS runs have passed; (runs, seconds)."""
    start = time.perf_counter()
    runs = 0
    while runs < MIN_WARMUP_RUNS or time.perf_counter() - start < warmup_s:
        run()
        runs += 1
    return runs, time.perf_counter() - start


def _timed_runs(run: Callable[[], Any], min_iters: int, min_seconds: float, max_seconds: float) -> list[float]:
    """Per-run latencies in ms: until >= min_iters and >= min_seconds, or max_seconds is reached."""
    latencies: list[float] = []
    clock = time.perf_counter_ns
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = clock()
        while True:
            t0 = clock()
            run()
            t1 = clock()
            latencies.append((t1 - t0) / 1e6)
            elapsed = (t1 - start) / 1e9
            if elapsed >= max_seconds or (len(latencies) >= min_iters and elapsed >= min_seconds):
                return latencies
    finally:
        if gc_was_enabled:
            gc.enable()


def measure_artifact(artifact_dir: str | os.PathLike, threads: int, warmup_s: float = 1.0, min_iters: int = 50,
                     min_seconds: float = 2.0, max_seconds: float = 60.0, seed: int = 0) -> dict[str, Any]:
    """Measure one artifact in this process (call once per process; see the module docstring)."""
    started = time.perf_counter()
    import numpy as np

    from edgeprune.measure.env import environment
    from edgeprune.measure.memory import current_rss_mb, peak_rss_mb
    from edgeprune.measure.stats import summarize
    from edgeprune.targets import require_runtime
    from edgeprune.targets.base import Artifact

    artifact = Artifact.open(artifact_dir)
    t0 = time.perf_counter()
    mod = require_runtime(artifact.runtime)
    import_s = time.perf_counter() - t0
    rss_before = current_rss_mb()
    rss_before = rss_before if rss_before is not None else peak_rss_mb()
    t0 = time.perf_counter()
    runner = mod.load(artifact, threads)
    load_s = time.perf_counter() - t0
    x = np.random.default_rng(seed).standard_normal(artifact.input_shape).astype(np.float32)
    t0 = time.perf_counter()
    runner.run(x)
    first_run_ms = (time.perf_counter() - t0) * 1e3
    warmup_runs, warmup_took = _warm_up(lambda: runner.run(x), warmup_s)
    t0 = time.perf_counter()
    latencies = _timed_runs(lambda: runner.run(x), min_iters, min_seconds, max_seconds)
    timed_s = time.perf_counter() - t0
    return {
        "artifact": str(Path(artifact_dir).resolve()),
        "runtime": artifact.runtime,
        "precision": artifact.precision,
        "threads": threads,
        "input_shape": artifact.input_shape,
        "latency": summarize(latencies, batch=artifact.input_shape[0]),
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_load_mb": rss_before,
        "load_s": load_s,
        "iterations": len(latencies),
        "warmup_iterations": warmup_runs + 1,
        "size_mb": artifact.size_bytes() / 1e6,
        "timing": {"import_runtime_s": import_s, "load_s": load_s, "first_run_ms": first_run_ms,
                   "warmup_s": warmup_took, "timed_s": timed_s, "worker_s": time.perf_counter() - started},
        "settings": {"warmup_s": warmup_s, "min_iters": min_iters, "min_seconds": min_seconds,
                     "max_seconds": max_seconds, "seed": seed},
        "environment": environment(threads),
        "thread_env": {var: os.environ.get(var) for var in THREAD_ENV_VARS},
        "versions": mod.versions(),
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edgeprune.measure.worker",
                                description="Measure one compiled artifact's latency and memory in this process.")
    p.add_argument("--artifact", required=True, help="compiled artifact folder (holds manifest.json)")
    p.add_argument("--threads", type=int, required=True, help="runtime threads (0 = the runtime's default)")
    p.add_argument("--warmup-s", type=float, default=1.0, help="minimum warm-up seconds. Default: %(default)s")
    p.add_argument("--min-iters", type=int, default=50, help="minimum timed runs. Default: %(default)s")
    p.add_argument("--min-seconds", type=float, default=2.0, help="minimum timed seconds. Default: %(default)s")
    p.add_argument("--max-seconds", type=float, default=60.0, help="stop timing after this. Default: %(default)s")
    p.add_argument("--seed", type=int, default=0, help="seed of the random input. Default: %(default)s")
    p.add_argument("--out", help="write the JSON result here (atomically); default: stdout")
    return p


def _check_args(args: argparse.Namespace) -> str | None:
    """A one-line complaint about an out-of-range option, or None."""
    from edgeprune.cores import usable_cores

    if not 0 <= args.threads <= usable_cores():
        return f"--threads must be in 0..{usable_cores()} on this machine (0 = runtime default), got {args.threads}"
    if args.min_iters < 1:
        return f"--min-iters must be >= 1, got {args.min_iters}"
    if min(args.warmup_s, args.min_seconds) < 0 or args.max_seconds <= 0:
        return "--warmup-s and --min-seconds must be >= 0 and --max-seconds > 0"
    if args.out and not Path(args.out).parent.is_dir():
        return f"the folder of --out {args.out} does not exist"
    return None


def die_with_parent() -> None:
    """On Linux, have the kernel SIGKILL this worker if the process that started it dies (even by SIGKILL)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # no prctl here: the parent's process-group kill still applies
        return


def main(argv: list[str] | None = None) -> int:
    die_with_parent()
    args = _parser().parse_args(argv)
    problem = _check_args(args)
    if problem:
        print(f"{ERROR_PREFIX}{problem}", file=sys.stderr)
        return 2
    set_thread_env(args.threads)
    from edgeprune.errors import EdgepruneError

    try:
        result = measure_artifact(args.artifact, args.threads, args.warmup_s, args.min_iters,
                                  args.min_seconds, args.max_seconds, args.seed)
    except EdgepruneError as exc:
        print(f"{ERROR_PREFIX}{exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # a runtime's own failure (load/run): report it in one line
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = f"{type(exc).__name__}: {lines[-1]}" if lines else type(exc).__name__
        print(f"{ERROR_PREFIX}{detail}", file=sys.stderr)
        return 1
    if args.out:
        from edgeprune.targets.base import write_json_atomic

        write_json_atomic(Path(args.out), result)
    else:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
