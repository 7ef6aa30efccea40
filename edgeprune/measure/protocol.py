"""Measuring artifacts in fresh processes, and comparing candidates in interleaved rounds.

Invariants:
- Every measurement is one fresh ``python -m edgeprune.measure.worker`` process
  (``sys.executable``), so no measurement sees another's caches, allocations or
  peak memory. A worker that fails or overruns ``timeout_s`` raises
  ``MeasurementError`` carrying the last line of its stderr. Workers run through
  ``interrupt.run_child`` (own process group, killed with everything it started
  whenever the parent stops waiting), so none outlives an interruption.
- ``MeasureSettings.threads`` lies in ``0..max_threads`` (the measuring machine's cores).
- ``measure_interleaved`` runs candidates in rounds A B C A B C ..., so a slow
  window of the machine hits every candidate alike. Each candidate's result is
  its *median round* (the measurement whose p50 is the median of its rounds'
  p50s; the lower middle one for an even number of rounds) plus every round's
  p50 and the spread max/min of those p50s, which says how noisy the run was.
Nothing here imports torch or any runtime.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import edgeprune
from edgeprune.cores import check_threads
from edgeprune.errors import EdgepruneError, UserInputError
from edgeprune.interrupt import run_child
from edgeprune.measure.worker import ERROR_PREFIX
from edgeprune.targets.base import Artifact

WORKER_MODULE = "edgeprune.measure.worker"
# Thresholds of round-to-round p50 spread (max/min) for the human note.
QUIET_SPREAD, NOISY_SPREAD = 1.05, 1.20


class MeasurementError(EdgepruneError):
    """A measurement process failed or timed out; the message carries its last error line."""

    exit_code = 1


@dataclass
class MeasureSettings:
    """How long and with how many threads each measurement runs (see ``worker``)."""

    threads: int = 1
    warmup_s: float = 1.0
    min_iters: int = 50
    min_seconds: float = 2.0
    max_seconds: float = 60.0
    timeout_s: float = 300.0
    cooldown_s: float = 0.0
    max_threads: int | None = None  # cores of the measuring machine; None: this one's (see ``cores``)

    def __post_init__(self) -> None:
        self.validate()  # a bad thread count fails here, before any compile or measurement starts

    def validate(self) -> None:
        self.threads = check_threads(self.threads, "--threads", self.max_threads)
        if self.min_iters < 1:
            raise UserInputError(f"min_iters must be >= 1, got {self.min_iters}")
        if min(self.warmup_s, self.min_seconds, self.cooldown_s) < 0 or self.max_seconds <= 0:
            raise UserInputError("warmup_s, min_seconds and cooldown_s must be >= 0 and max_seconds > 0")
        if self.timeout_s <= 0:
            raise UserInputError(f"timeout_s must be > 0, got {self.timeout_s}")

    def worker_args(self) -> list[str]:
        return ["--threads", str(self.threads), "--warmup-s", str(self.warmup_s), "--min-iters", str(self.min_iters),
                "--min-seconds", str(self.min_seconds), "--max-seconds", str(self.max_seconds)]


def _child_env() -> dict[str, str]:
    """This environment, with the folder holding this ``edgeprune`` first on PYTHONPATH."""
    env = dict(os.environ)
    root = str(Path(edgeprune.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _last_line(text: str | bytes | None) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1].removeprefix(ERROR_PREFIX) if lines else "no error message"


def measure(artifact_dir: str | os.PathLike, settings: MeasureSettings | None = None, seed: int = 0) -> dict[str, Any]:
    """Measure one artifact in a fresh worker process and return its JSON result (see ``worker``).

    The result also carries ``process_s``: the wall time of the whole process (start, imports, load, runs).
    """
    settings = settings or MeasureSettings()
    settings.validate()
    artifact = Artifact.open(artifact_dir)  # a non-artifact folder fails here, before any process starts
    with tempfile.TemporaryDirectory(prefix="edgeprune-measure-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", WORKER_MODULE, "--artifact", str(artifact.path), *settings.worker_args(),
               "--seed", str(seed), "--out", str(out)]
        started = time.perf_counter()
        try:
            proc = run_child(cmd, timeout=settings.timeout_s, env=_child_env())
        except subprocess.TimeoutExpired as exc:
            said = f": {_last_line(exc.stderr)}" if exc.stderr else ""
            raise MeasurementError(f"measuring {artifact.path} timed out after {settings.timeout_s:g} s{said}",
                                   "raise timeout_s or lower min_seconds/max_seconds") from exc
        took = time.perf_counter() - started
        if proc.returncode != 0:
            raise MeasurementError(f"measuring {artifact.path} failed (exit {proc.returncode}): "
                                   f"{_last_line(proc.stderr)}")
        if not out.is_file():
            raise MeasurementError(f"measuring {artifact.path} wrote no result: {_last_line(proc.stderr)}")
        result = json.loads(out.read_text())
    result["process_s"] = took
    return result


def _noise(p50s: list[float]) -> dict[str, Any]:
    """Round-to-round spread of p50 (max/min) and a sentence saying what it means."""
    if len(p50s) < 2:
        return {"spread": 1.0, "note": "one round only: noise unknown; use 3 or more rounds to judge it"}
    spread = max(p50s) / min(p50s)
    word = "quiet" if spread < QUIET_SPREAD else ("noisy" if spread >= NOISY_SPREAD else "moderately noisy")
    return {"spread": spread,
            "note": f"{word}: p50 varied {spread:.2f}x across {len(p50s)} rounds "
                    f"({min(p50s):.3f}-{max(p50s):.3f} ms); differences smaller than "
                    f"{100 * (spread - 1):.0f}% are within this run's noise"}


def _combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One candidate's rounds -> its median-round measurement plus the rounds' p50s and noise."""
    p50s = [float(r["latency"]["p50_ms"]) for r in runs]
    order = sorted(range(len(p50s)), key=lambda i: p50s[i])
    mid = order[(len(order) - 1) // 2]
    return {**runs[mid], "rounds": p50s, "median_round": mid, "p50_ms_median": statistics.median(p50s),
            "p50_ms_min": min(p50s), "noise": _noise(p50s)}


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional on a device: measure without a bar
        return None
    return tqdm(total=total, desc="measure", unit="run", file=sys.stderr, leave=False)


def measure_interleaved(artifacts: Mapping[str, str | os.PathLike], settings: MeasureSettings | None = None,
                        rounds: int = 3, progress: bool = True, seed: int = 0,
                        on_measure: Callable[[str, int, dict[str, Any]], None] | None = None
                        ) -> dict[str, dict[str, Any]]:
    """Measure every candidate ``rounds`` times, interleaved A B C A B C ..., each in a fresh process.

    ``on_measure(name, round_index, result)`` is called after each measurement, in order.
    Returns ``name -> median-round result`` with "rounds", "p50_ms_median", "p50_ms_min" and "noise".
    """
    settings = settings or MeasureSettings()
    settings.validate()
    if not artifacts:
        raise UserInputError("measure_interleaved needs at least one artifact")
    if rounds < 1:
        raise UserInputError(f"rounds must be >= 1, got {rounds}")
    for path in artifacts.values():
        Artifact.open(path)  # fail on a bad folder before spending minutes on the others
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in artifacts}
    bar = _progress_bar(rounds * len(artifacts), progress)
    try:
        for rnd in range(rounds):
            for name, path in artifacts.items():
                if settings.cooldown_s > 0 and (rnd or name != next(iter(artifacts))):
                    time.sleep(settings.cooldown_s)
                if bar is not None:
                    bar.set_postfix_str(f"round {rnd + 1}/{rounds} {name}")
                result = measure(path, settings, seed=seed)
                runs[name].append(result)
                if on_measure is not None:
                    on_measure(name, rnd, result)
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return {name: _combine(results) for name, results in runs.items()}
