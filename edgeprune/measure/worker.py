"""One measurement of one compiled artifact, in this (fresh) process.

Run as ``python -m edgeprune.measure.worker --artifact DIR --threads N [--out FILE]``.

Invariant: a worker process measures exactly one artifact, so its peak resident
memory (VmHWM) belongs to that artifact plus the interpreter and the runtime, and
no other model's kernels, caches or allocations are warm. The thread-count
environment variables (OMP_NUM_THREADS, MKL_NUM_THREADS, ...) are set before
numpy or any runtime is imported, which is why this module imports only the
standard library at the top (``settings``, ``cores`` and ``errors`` are too). Order
of events: check the settings (``MeasureSettings``: the defaults and checks live
there, nowhere else), import the runtime, load the artifact (timed), build one
seeded random float32 input of the artifact's input shape, run it once (timed
apart), then the one timing loop that table entries use too (``timing.time_runs``:
warm-up by time, garbage collector off, minimum runs and minimum seconds). A worker
never outlives the process that started it (``die_with_parent``; the parent also
kills its process group, see ``interrupt``). The result is one JSON object (see
``measure_artifact``); a failure is one line on stderr and a non-zero exit.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from edgeprune.measure.settings import MeasureSettings

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                   "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "TBB_NUM_THREADS")
ERROR_PREFIX = "edgeprune-measure: error: "  # starts the one stderr line of a failure


def set_thread_env(threads: int) -> None:
    """Pin math-library thread pools to ``threads`` (0 = leave the runtime's default)."""
    if threads > 0:
        for var in THREAD_ENV_VARS:
            os.environ[var] = str(threads)


def measure_artifact(artifact_dir: str | os.PathLike, settings: MeasureSettings, seed: int = 0) -> dict[str, Any]:
    """Measure one artifact in this process (call once per process; see the module docstring)."""
    started = time.perf_counter()
    import numpy as np

    from edgeprune.measure.env import environment
    from edgeprune.measure.memory import current_rss_mb, peak_rss_mb
    from edgeprune.measure.timing import time_runs
    from edgeprune.targets import require_runtime
    from edgeprune.targets.base import Artifact

    threads = settings.threads
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
    timed = time_runs(lambda: runner.run(x), settings, batch=artifact.input_shape[0])
    loop = timed["loop"]
    return {
        "artifact": str(Path(artifact_dir).resolve()),
        "runtime": artifact.runtime,
        "precision": artifact.precision,
        "threads": threads,
        "input_shape": artifact.input_shape,
        "latency": timed["latency"],
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_load_mb": rss_before,
        "load_s": load_s,
        "iterations": loop["timed_runs"],
        "warmup_iterations": loop["warmup_runs"] + 1,
        "size_mb": artifact.size_bytes() / 1e6,
        "timing": {"import_runtime_s": import_s, "load_s": load_s, "first_run_ms": first_run_ms,
                   "warmup_s": loop["warmup_s"], "timed_s": loop["timed_s"], "gc_disabled": loop["gc_disabled"],
                   "worker_s": time.perf_counter() - started},
        "settings": {**settings.timing(), "seed": seed},
        "environment": environment(threads),
        "thread_env": {var: os.environ.get(var) for var in THREAD_ENV_VARS},
        "versions": mod.versions(),
    }


def _parser() -> argparse.ArgumentParser:
    d = {f.name: f.default for f in fields(MeasureSettings)}  # the defaults live in MeasureSettings only
    p = argparse.ArgumentParser(prog="python -m edgeprune.measure.worker",
                                description="Measure one compiled artifact's latency and memory in this process.")
    p.add_argument("--artifact", required=True, help="compiled artifact folder (holds manifest.json)")
    p.add_argument("--threads", type=int, required=True, help="runtime threads (0 = the runtime's default)")
    p.add_argument("--warmup-s", type=float, default=d["warmup_s"],
                   help="minimum warm-up seconds. Default: %(default)s")
    p.add_argument("--min-iters", type=int, default=d["min_iters"],
                   help="minimum timed runs. Default: %(default)s")
    p.add_argument("--min-seconds", type=float, default=d["min_seconds"],
                   help="minimum timed seconds. Default: %(default)s")
    p.add_argument("--max-seconds", type=float, default=d["max_seconds"],
                   help="stop timing after this. Default: %(default)s")
    p.add_argument("--seed", type=int, default=0, help="seed of the random input. Default: %(default)s")
    p.add_argument("--out", help="write the JSON result here (atomically); default: stdout")
    return p


def _settings(args: argparse.Namespace) -> tuple[MeasureSettings | None, str | None]:
    """(settings, None) from the flags, or (None, a one-line complaint about an out-of-range option)."""
    from edgeprune.errors import UserInputError

    if args.out and not Path(args.out).parent.is_dir():
        return None, f"the folder of --out {args.out} does not exist"
    try:
        return MeasureSettings(threads=args.threads, warmup_s=args.warmup_s, min_iters=args.min_iters,
                               min_seconds=args.min_seconds, max_seconds=args.max_seconds), None
    except UserInputError as exc:
        return None, exc.one_line()


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
    settings, problem = _settings(args)
    if problem or settings is None:
        print(f"{ERROR_PREFIX}{problem}", file=sys.stderr)
        return 2
    set_thread_env(args.threads)
    from edgeprune.errors import EdgepruneError

    try:
        result = measure_artifact(args.artifact, settings, args.seed)
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
