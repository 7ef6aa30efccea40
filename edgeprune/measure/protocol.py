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
- With a ``question`` (``decide.Question``: within a budget? A faster than B?) it
  runs ``rounds`` rounds, then adds one round at a time until the question is
  decided at ``confidence`` or ``max_rounds`` is reached, and returns the answer
  with the results (``Interleaved.decision``). ``run_rounds`` is that loop for any
  way of measuring one round (here: fresh local processes; ``remote``: a job on a
  device), so local and remote comparisons decide the same way.
- ``measure_paired_rounds`` is the same for a shared machine: a round is one process timing every
  artifact in alternating bursts against a reference (``measure.paired``), so a load phase cancels out.
Nothing here imports torch or any runtime; scipy (``decide``) only when a question
is asked, which happens on the host — a device measures fixed rounds.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import edgeprune
from edgeprune.errors import EdgepruneError, UserInputError
from edgeprune.interrupt import run_child
from edgeprune.measure.settings import MeasureSettings, RoundPolicy
from edgeprune.measure.worker import ERROR_PREFIX
from edgeprune.targets.base import Artifact

if TYPE_CHECKING:
    from edgeprune.measure.decide import Question

__all__ = ["Interleaved", "MeasureSettings", "MeasurementError", "RoundPolicy", "measure", "measure_interleaved",
           "measure_paired_rounds", "run_rounds"]

WORKER_MODULE = "edgeprune.measure.worker"
# Thresholds of round-to-round p50 spread (max/min) for the human note.
QUIET_SPREAD, NOISY_SPREAD = 1.05, 1.20


class MeasurementError(EdgepruneError):
    """A measurement process failed or timed out; the message carries its last error line."""

    exit_code = 1


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


def _combine(runs: list[dict[str, Any]], policy: RoundPolicy | None = None) -> dict[str, Any]:
    """One candidate's rounds -> its median-round measurement plus the rounds' p50s and noise.

    With a ``policy`` (a comparison that asked a question) it also carries ``p50_interval_ms``: the
    interval for the median per-round p50 at the level the question was answered (``decide``).
    """
    p50s = [float(r["latency"]["p50_ms"]) for r in runs]
    order = sorted(range(len(p50s)), key=lambda i: p50s[i])
    mid = order[(len(order) - 1) // 2]
    combined = {**runs[mid], "rounds": p50s, "median_round": mid, "p50_ms_median": statistics.median(p50s),
                "p50_ms_min": min(p50s), "noise": _noise(p50s)}
    if policy is not None:
        from edgeprune.measure.decide import p50_interval

        combined["p50_interval_ms"] = p50_interval(p50s, policy.min_rounds, policy.max_rounds, policy.confidence)
        combined["confidence"] = policy.confidence
    return combined


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional on a device: measure without a bar
        return None
    return tqdm(total=total, desc="measure", unit="run", file=sys.stderr, leave=False)


class Interleaved(dict):
    """``name -> combined result`` (a plain dict to every existing caller), plus ``decision``: the
    question's answer (``decide.answer``) when one was asked, else None, and ``rounds_taken``."""

    decision: dict[str, Any] | None = None
    rounds_taken: int = 0


QuestionArg = "Question | Callable[[Mapping[str, list[float]]], Question | None] | None"


def run_rounds(names: Sequence[str], measure_round: Callable[[int], Mapping[str, dict[str, Any]]], *,
               rounds: int = 3, question: QuestionArg = None, max_rounds: int | None = None,
               confidence: float | None = None, on_round: Callable[[int, dict[str, Any] | None], None] | None = None
               ) -> Interleaved:
    """Call ``measure_round(index)`` (one measurement of every candidate, interleaved) for ``rounds`` rounds;
    with a ``question``, go on one round at a time until it is decided or ``max_rounds`` is reached.

    ``question`` is a ``decide.Question``, or a function of every candidate's per-round p50s so far that
    returns the question to ask now (e.g. "is the fastest faster than the runner-up?"; None: none).
    Without a question exactly ``rounds`` rounds run (``max_rounds`` is ignored) and nothing but the
    standard library is used. ``on_round(index, answer_so_far)`` is called after each round.
    """
    if not names:
        raise UserInputError("an interleaved measurement needs at least one candidate")
    policy = RoundPolicy.resolve(rounds, max_rounds if question is not None else rounds, confidence)
    if question is not None and not callable(question):
        missing = [n for n in question.names if n not in names]
        if missing:
            raise UserInputError(f"the question is about {', '.join(missing)}, which is not measured here")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    decision = None
    for rnd in range(policy.max_rounds):
        measured = measure_round(rnd)
        for name in names:
            runs[name].append(measured[name])
        asked = question
        if question is not None and rnd + 1 >= policy.min_rounds:
            from edgeprune.measure.decide import answer

            p50s = {n: [float(r["latency"]["p50_ms"]) for r in runs[n]] for n in names}
            asked = question(p50s) if callable(question) else question
            decision = None if asked is None else answer(asked, p50s, policy.min_rounds, policy.max_rounds,
                                                         policy.confidence)
        if on_round is not None:
            on_round(rnd, decision)
        if rnd + 1 >= policy.min_rounds and (asked is None or decision is None or decision["final"]):
            break
    out = Interleaved({name: _combine(results, policy if question is not None else None)
                       for name, results in runs.items()})
    out.decision, out.rounds_taken = decision, len(runs[names[0]])
    return out


def _rounds_then_close(names: Sequence[str], one_round: Callable[[int], Mapping[str, dict[str, Any]]],
                       policy: RoundPolicy, question: QuestionArg, bar) -> Interleaved:
    """``run_rounds`` under ``policy``, closing the progress bar whatever happens."""
    try:
        return run_rounds(names, one_round, rounds=policy.min_rounds, question=question,
                          max_rounds=policy.max_rounds, confidence=policy.confidence)
    finally:
        if bar is not None:
            bar.close()


def measure_interleaved(artifacts: Mapping[str, str | os.PathLike], settings: MeasureSettings | None = None,
                        rounds: int = 3, progress: bool = True, seed: int = 0,
                        on_measure: Callable[[str, int, dict[str, Any]], None] | None = None, *,
                        question: QuestionArg = None, max_rounds: int | None = None,
                        confidence: float | None = None) -> Interleaved:
    """Measure every candidate interleaved, A B C A B C ..., each in a fresh process.

    Without ``question``: exactly ``rounds`` rounds. With one: at least ``rounds``, then more until the
    question is decided at ``confidence`` (default 0.95) or ``max_rounds`` (default 15, or ``rounds`` if
    more) is reached; the answer is ``result.decision`` (see ``decide.answer``).
    ``on_measure(name, round_index, result)`` is called after each measurement, in order.
    Returns ``name -> median-round result`` with "rounds", "p50_ms_median", "p50_ms_min" and "noise"
    (and "p50_interval_ms" when a question was asked).
    """
    settings = settings or MeasureSettings()
    settings.validate()
    if not artifacts:
        raise UserInputError("measure_interleaved needs at least one artifact")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise UserInputError(f"rounds must be >= 1, got {rounds}")
    policy = RoundPolicy.resolve(rounds, max_rounds if question is not None else rounds, confidence)
    for path in artifacts.values():
        Artifact.open(path)  # fail on a bad folder before spending minutes on the others
    names = list(artifacts)
    bar = _progress_bar(policy.min_rounds * len(names), progress)

    def one_round(rnd: int) -> dict[str, dict[str, Any]]:
        if bar is not None and rnd >= policy.min_rounds:
            bar.total += len(names)
            bar.refresh()
        measured = {}
        for name in names:
            if settings.cooldown_s > 0 and (rnd or name != names[0]):
                time.sleep(settings.cooldown_s)
            if bar is not None:
                bar.set_postfix_str(f"round {rnd + 1} {name}")
            measured[name] = measure(artifacts[name], settings, seed=seed)
            if on_measure is not None:
                on_measure(name, rnd, measured[name])
            if bar is not None:
                bar.update(1)
        return measured

    return _rounds_then_close(names, one_round, policy, question, bar)


def measure_paired_rounds(artifacts: Mapping[str, str | os.PathLike], settings: MeasureSettings | None = None,
                          rounds: int = 3, *, reference: str, progress: bool = True, seed: int = 0,
                          question: QuestionArg = None, max_rounds: int | None = None,
                          confidence: float | None = None) -> Interleaved:
    """``measure_interleaved`` for a shared machine: a round is one fresh process that times every artifact in
    alternating short bursts (``measure.paired``), and a round's p50 of an artifact is its median burst ratio
    to ``reference`` times the reference's quiet-phase burst p50 in that process — so a phase of another
    tenant's load, which slows every artifact of a cycle alike, cancels out of the round's figures and out of
    the per-round ratios a question is decided on. The other latency statistics (p90, p99, min, mean) are over
    every timed call of the round's process, phases included. Peak memory, size and environment come from one
    ``measure`` per artifact (one artifact per process) before the rounds. Same return shape as
    ``measure_interleaved``; each result also carries ``paired`` (the round's ratio and its interval) and
    ``statistic`` (what p50 means here)."""
    from edgeprune.measure.paired import measure_paired

    settings = settings or MeasureSettings()
    settings.validate()
    if reference not in artifacts:
        raise UserInputError(f"the paired reference {reference!r} is not among the artifacts measured")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise UserInputError(f"rounds must be >= 1, got {rounds}")
    policy = RoundPolicy.resolve(rounds, max_rounds if question is not None else rounds, confidence)
    names = list(artifacts)
    bar = _progress_bar(len(names) + policy.min_rounds, progress)
    single = {}
    for name in names:
        if bar is not None:
            bar.set_postfix_str(f"memory and size: {name}")
        single[name] = measure(artifacts[name], settings, seed=seed)
        if bar is not None:
            bar.update(1)

    def one_round(rnd: int) -> dict[str, dict[str, Any]]:
        if bar is not None:
            if rnd >= policy.min_rounds:
                bar.total += 1
                bar.refresh()
            bar.set_postfix_str(f"paired round {rnd + 1}")
        res = measure_paired(artifacts, settings, rounds=1, reference=reference)
        out = {}
        for name in names:
            r = res[name]
            lat = {**r["calls_latency"], "p50_ms": r["p50_ms"]}
            out[name] = {**single[name], "latency": lat,
                         "paired": {k: r[k] for k in ("ratio", "ratio_interval", "reference", "reference_quiet_ms",
                                                      "cycles", "burst_spread")},
                         "statistic": "p50: median burst ratio to the reference x the reference's quiet-phase "
                                      "(25th percentile) burst p50, bursts alternating in one process per round"}
        if bar is not None:
            bar.update(1)
        return out

    return _rounds_then_close(names, one_round, policy, question, bar)
