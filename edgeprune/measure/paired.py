"""Paired latency: several artifacts in one process, timed in alternating short bursts against a reference.

Why: on a shared machine a core's speed changes in phases that last about a second (another tenant on the
same physical core). Measured on the 2-core development VM with nothing else running in it: one ResNet-20
artifact's 200-call medians moved between 0.59 and 0.98 ms within 16 seconds, and fresh-process rounds of a
second each of the same two artifacts gave 0.47-1.07 ms and 0.24-0.57 ms. Rounds seconds apart see different
machines, so an allocation that is 10% faster can measure 40% slower, however many rounds are taken.

Here every model runs in turn for a *burst* of about ``burst_s`` seconds (A B C, then B C A, ...; the order
rotates so no model always follows the same one), after two untimed calls that bring its weights back into
cache. A cycle lasts a few tens of milliseconds, well inside one phase, so the ratio of a model's burst
median to the *reference's* burst median in the same cycle cancels the phase. Each model's figure is:

- ``ratio``: the median over cycles of that per-cycle ratio (the reference's is 1), with a bootstrap
  interval (``scipy.stats.bootstrap``, percentile method) when scipy is importable. Only the *quiet* cycles
  count (the reference's burst within ``QUIET_BAND`` of its quiet figure) when there are enough of them:
  a loaded phase does not slow every model alike (a model that fits in cache suffers less from a neighbour
  on the same core), so measured here a 50%-pruned ResNet-20 read 0.51x of the unpruned one in quiet
  phases and 0.55x in loaded ones;
- ``p50_ms``: ``ratio`` times the reference's *quiet* latency — the 25th percentile of its burst medians,
  the machine as it is when least disturbed — or times ``reference_ms`` when the caller has one (a search
  compares every measurement with the same baseline figure, so its budget and its candidates agree).

``measure_paired`` runs ``rounds`` fresh processes (``python -m edgeprune.measure.paired``) and pools their
cycles. What it does not do: peak memory (one process holds every model) — a build's reported figures still
come from ``protocol.measure``, one artifact per process.
Invariants: the reference's ratio is exactly 1; ``burst_cycles`` and ``summarize`` are pure (a fake clock
and fake runners test them); the worker imports only the standard library before it sets the thread-count
environment variables.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from edgeprune.measure.settings import MeasureSettings

PAIRED_MODULE = "edgeprune.measure.paired"
WARM_CALLS = 2          # untimed calls at the start of each burst: the model's weights back in cache
QUIET_QUANTILE = 0.25   # the reference's burst medians at this quantile: its latency when least disturbed
BURST_S = 0.05
QUIET_BAND = 1.15       # cycles whose reference burst is within this factor of its quiet figure are "quiet"
MIN_QUIET_CYCLES = 5    # ratios come from the quiet cycles when there are at least this many, else from all


def burst_cycles(runs: Mapping[str, Callable[[], Any]], cycles: int, calls: Mapping[str, int],
                 clock: Callable[[], int] = time.perf_counter_ns,
                 every_call: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """Each model's burst medians (ms), one per cycle: every cycle runs every model for ``calls[name]`` timed
    calls (after ``WARM_CALLS`` untimed ones), in an order that rotates by one each cycle. ``every_call``, when
    given, receives every timed call's latency (ms) per model."""
    names = list(runs)
    out: dict[str, list[float]] = {n: [] for n in names}
    for cycle in range(cycles):
        k = cycle % len(names)
        for name in names[k:] + names[:k]:
            run = runs[name]
            for _ in range(WARM_CALLS):
                run()
            times = []
            for _ in range(max(1, int(calls[name]))):
                t0 = clock()
                run()
                times.append((clock() - t0) / 1e6)
            out[name].append(statistics.median(times))
            if every_call is not None:
                every_call.setdefault(name, []).extend(times)
    return out


def _interval(ratios: list[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """Bootstrap interval of the median ratio (scipy), or None where scipy is absent or there is too little."""
    if len(ratios) < 5:
        return None
    try:
        import numpy as np
        from scipy.stats import bootstrap
    except ImportError:
        return None
    if max(ratios) - min(ratios) < 1e-12:
        return (ratios[0], ratios[0])
    res = bootstrap((np.asarray(ratios),), np.median, confidence_level=confidence, method="percentile",
                    n_resamples=2000, random_state=0)
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def summarize(bursts: Mapping[str, list[float]], reference: str, reference_ms: float | None = None
              ) -> dict[str, dict[str, Any]]:
    """Per model: median per-cycle ratio to ``reference``, its interval, and the latency it implies (see module)."""
    import numpy as np

    ref = bursts[reference]
    quiet = float(np.percentile(ref, 100 * QUIET_QUANTILE, method="linear"))
    scale = quiet if reference_ms is None else float(reference_ms)
    calm = [i for i, r in enumerate(ref) if r <= quiet * QUIET_BAND]
    use = calm if len(calm) >= MIN_QUIET_CYCLES else list(range(len(ref)))
    out = {}
    for name, meds in bursts.items():
        if len(meds) != len(ref):
            raise ValueError(f"{name} has {len(meds)} bursts, the reference {len(ref)}")
        ratios = [meds[i] / ref[i] for i in use]
        ratio = 1.0 if name == reference else statistics.median(ratios)
        interval = (1.0, 1.0) if name == reference else _interval(ratios)
        out[name] = {"ratio": ratio, "ratio_interval": interval, "p50_ms": ratio * scale,
                     "p50_interval_ms": None if interval is None else (interval[0] * scale, interval[1] * scale),
                     "cycles": len(meds), "quiet_cycles": len(use), "reference": reference, "reference_quiet_ms": quiet,
                     "scale_ms": scale, "burst_median_ms": statistics.median(meds),
                     "burst_spread": max(meds) / min(meds)}
    return out


def measure_in_process(artifacts: Mapping[str, str], settings: MeasureSettings, cycles: int,
                       burst_s: float = BURST_S, seed: int = 0) -> dict[str, Any]:
    """Load every artifact here, warm each up, size its bursts to ``burst_s``, run ``cycles`` cycles."""
    import numpy as np

    from edgeprune.measure.timing import warm_up
    from edgeprune.targets import require_runtime
    from edgeprune.targets.base import Artifact

    runs, one_call_ms = {}, {}
    for name, path in artifacts.items():
        art = Artifact.open(path)
        runner = require_runtime(art.runtime).load(art, settings.threads)
        x = np.random.default_rng(seed).standard_normal(art.input_shape).astype(np.float32)
        runs[name] = (lambda r=runner, x=x: r.run(x))
    for name, run in runs.items():
        n, took = warm_up(run, settings.warmup_s)
        one_call_ms[name] = 1e3 * took / max(1, n)
    calls = {name: max(3, int(burst_s * 1e3 / max(ms, 1e-6))) for name, ms in one_call_ms.items()}
    every: dict[str, list[float]] = {}
    bursts = burst_cycles(runs, cycles, calls, every_call=every)
    from edgeprune.measure.stats import summarize as summarize_calls

    return {"bursts": bursts, "calls": calls, "latency": {n: summarize_calls(every[n]) for n in runs}}


def cycles_for(settings: MeasureSettings, burst_s: float = BURST_S) -> int:
    """Cycles per process: every model gets about ``settings.min_seconds`` of timed calls, at least 10 bursts."""
    return max(10, int(round(settings.min_seconds / burst_s)))


def measure_paired(artifacts: Mapping[str, str | Path], settings: MeasureSettings, rounds: int = 2,
                   reference: str | None = None, reference_ms: float | None = None, burst_s: float = BURST_S,
                   cycles: int | None = None) -> dict[str, dict[str, Any]]:
    """``rounds`` fresh processes, each timing every artifact in alternating bursts; their cycles pooled and
    summarised against ``reference`` (default: the first artifact). See the module docstring."""
    from edgeprune.interrupt import run_child
    from edgeprune.measure.protocol import MeasurementError, _child_env, _last_line

    settings.validate()
    names = list(artifacts)
    if not names:
        raise ValueError("nothing to measure")
    reference = reference or names[0]
    cycles = cycles or cycles_for(settings, burst_s)
    pooled: dict[str, list[float]] = {n: [] for n in names}
    specs = [f"{n}={Path(p).resolve()}" for n, p in artifacts.items()]
    for _ in range(max(1, rounds)):
        with tempfile.TemporaryDirectory(prefix="edgeprune-paired-") as tmp:
            out = Path(tmp) / "result.json"
            cmd = [sys.executable, "-m", PAIRED_MODULE, *[a for s in specs for a in ("--artifact", s)],
                   "--threads", str(settings.threads), "--warmup-s", str(settings.warmup_s),
                   "--cycles", str(cycles), "--burst-s", str(burst_s), "--out", str(out)]
            try:
                proc = run_child(cmd, timeout=settings.timeout_s + cycles * burst_s * len(names) * 4,
                                 env=_child_env())
            except subprocess.TimeoutExpired as exc:
                raise MeasurementError(f"paired measurement of {', '.join(names)} timed out",
                                       "raise the measurement timeout") from exc
            if proc.returncode != 0 or not out.is_file():
                raise MeasurementError(f"paired measurement of {', '.join(names)} failed (exit {proc.returncode}): "
                                       f"{_last_line(proc.stderr)}")
            result = json.loads(out.read_text())
        for n in names:
            pooled[n].extend(result["bursts"][n])
    summary = summarize(pooled, reference, reference_ms)
    for n in names:
        summary[n]["rounds"] = max(1, rounds)
        summary[n]["calls_latency"] = result["latency"][n]  # every timed call of the last process, all phases
    return summary


def main(argv: list[str] | None = None) -> int:
    from edgeprune.measure.worker import ERROR_PREFIX, die_with_parent, set_thread_env

    die_with_parent()
    p = argparse.ArgumentParser(prog=f"python -m {PAIRED_MODULE}", description=__doc__.split("\n")[0])
    p.add_argument("--artifact", action="append", required=True, metavar="NAME=DIR",
                   help="a compiled artifact folder, named (repeat; the first is the reference)")
    p.add_argument("--threads", type=int, required=True, help="runtime threads (0 = the runtime's default)")
    p.add_argument("--warmup-s", type=float, default=0.5, help="warm-up seconds per model. Default: %(default)s")
    p.add_argument("--cycles", type=int, default=20, help="cycles (one burst of every model). Default: %(default)s")
    p.add_argument("--burst-s", type=float, default=BURST_S, help="seconds per burst. Default: %(default)s")
    p.add_argument("--seed", type=int, default=0, help="seed of the random input. Default: %(default)s")
    p.add_argument("--out", help="write the JSON result here; default: stdout")
    args = p.parse_args(argv)
    arts = {}
    for spec in args.artifact:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            print(f"{ERROR_PREFIX}--artifact takes NAME=DIR, got {spec!r}", file=sys.stderr)
            return 2
        arts[name] = path
    if args.cycles < 1 or args.burst_s <= 0:
        print(f"{ERROR_PREFIX}--cycles must be >= 1 and --burst-s > 0", file=sys.stderr)
        return 2
    set_thread_env(args.threads)
    settings = MeasureSettings(threads=args.threads, warmup_s=args.warmup_s)
    try:
        result = measure_in_process(arts, settings, args.cycles, args.burst_s, args.seed)
    except Exception as exc:  # a runtime's own failure: one line
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        print(f"{ERROR_PREFIX}{type(exc).__name__}: {lines[-1] if lines else ''}", file=sys.stderr)
        return 1
    text = json.dumps(result)
    if args.out:
        from edgeprune.targets.base import write_json_atomic

        write_json_atomic(Path(args.out), result)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
