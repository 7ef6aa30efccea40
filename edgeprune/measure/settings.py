"""How a measurement runs and how many rounds a comparison may take: the one place for defaults and checks.

``MeasureSettings`` drives the one timing loop (``timing.time_runs``) in both workers — the
whole-model worker (``worker``) and the table worker (``lut_worker``) — and the fresh-process
protocol around it (``protocol``). ``TABLE_TIMING`` is the same loop's settings for table entries
(micro-models of a few microseconds: a short warm-up and timed window, the same policy).
``RoundPolicy`` says how many interleaved rounds a comparison takes: at least ``min_rounds``, at
most ``max_rounds``, and the confidence at which its question is answered (see ``decide``).

Invariant: standard library only (plus ``edgeprune.cores``/``errors``, which are too), so the
worker can build and check its settings before numpy or a runtime is imported. A value out of
range is one ``UserInputError`` naming the setting (or its flag) and the range.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from edgeprune.cores import check_threads
from edgeprune.errors import UserInputError

MIN_WARMUP_RUNS = 5  # the warm-up lasts at least this many runs, whatever ``warmup_s`` says
MAX_ROUNDS_LIMIT = 1000


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class MeasureSettings:
    """How long and with how many threads each measurement runs.

    The timing loop warms up for at least ``warmup_s`` seconds and ``MIN_WARMUP_RUNS`` runs, then times
    runs (garbage collector off) until at least ``min_iters`` runs and ``min_seconds`` seconds have passed,
    or ``max_seconds`` is reached (at least one timed run). ``timeout_s`` bounds a whole worker process;
    ``cooldown_s`` is a pause between measurements of an interleaved comparison.
    """

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
        if isinstance(self.min_iters, bool) or not isinstance(self.min_iters, int) or self.min_iters < 1:
            raise UserInputError(f"min_iters must be a whole number >= 1, got {self.min_iters!r}")
        for name in ("warmup_s", "min_seconds", "max_seconds", "timeout_s", "cooldown_s"):
            if not _finite(getattr(self, name)):
                raise UserInputError(f"{name} must be a finite number of seconds, got {getattr(self, name)!r}")
        if min(self.warmup_s, self.min_seconds, self.cooldown_s) < 0 or self.max_seconds <= 0:
            raise UserInputError("warmup_s, min_seconds and cooldown_s must be >= 0 and max_seconds > 0")
        if self.timeout_s <= 0:
            raise UserInputError(f"timeout_s must be > 0, got {self.timeout_s}")

    def timing(self) -> dict[str, float]:
        """The timing loop's part of the settings (what ``timing.time_runs`` takes)."""
        return {"warmup_s": self.warmup_s, "min_iters": self.min_iters, "min_seconds": self.min_seconds,
                "max_seconds": self.max_seconds}

    def worker_args(self) -> list[str]:
        return ["--threads", str(self.threads), "--warmup-s", repr(float(self.warmup_s)),
                "--min-iters", str(self.min_iters), "--min-seconds", repr(float(self.min_seconds)),
                "--max-seconds", repr(float(self.max_seconds))]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MeasureSettings":
        """Settings from a job file; unknown keys are refused (a typo must not fall back to a default)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserInputError(f"unknown measurement settings: {', '.join(unknown)}",
                                 f"known: {', '.join(sorted(known))}")
        return cls(**dict(data))

    @classmethod
    def for_table(cls, threads: int, max_threads: int | None = None) -> "MeasureSettings":
        """The timing loop's settings for one latency-table entry (see ``TABLE_TIMING``)."""
        return cls(threads=threads, max_threads=max_threads, **TABLE_TIMING)


# Table entries are micro-models (microseconds to a millisecond a run), timed as one of many points in a
# row process: the same loop as whole models, with a warm-up and window sized for them.
TABLE_TIMING: dict[str, float] = {"warmup_s": 0.01, "min_iters": 20, "min_seconds": 0.03, "max_seconds": 5.0}


@dataclass(frozen=True)
class RoundPolicy:
    """Interleaved rounds of a comparison: ``min_rounds`` first, then more until the question is decided
    at ``confidence``, at most ``max_rounds`` in all (see ``decide``)."""

    min_rounds: int = 3
    max_rounds: int = 15
    confidence: float = 0.95

    def __post_init__(self) -> None:
        for name, flag in (("min_rounds", "--rounds"), ("max_rounds", "--max-rounds")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ROUNDS_LIMIT:
                raise UserInputError(f"{flag} must be a whole number in [1, {MAX_ROUNDS_LIMIT}], got {value!r}")
        if self.max_rounds < self.min_rounds:
            raise UserInputError(f"--max-rounds ({self.max_rounds}) is below --rounds ({self.min_rounds})",
                                 "--rounds is the minimum number of rounds, --max-rounds the cap")
        if not _finite(self.confidence) or not 0.5 <= self.confidence < 1:
            raise UserInputError(f"--confidence must be a number in [0.5, 1), got {self.confidence!r}",
                                 "e.g. 0.95")

    @classmethod
    def resolve(cls, rounds: int | None = None, max_rounds: int | None = None,
                confidence: float | None = None) -> "RoundPolicy":
        """A policy from optional flags: a missing cap is the default cap, raised to ``rounds`` if below it."""
        default = cls()
        low = default.min_rounds if rounds is None else rounds
        if max_rounds is None:
            max_rounds = max(default.max_rounds, low) if isinstance(low, int) else default.max_rounds
        return cls(low, max_rounds, default.confidence if confidence is None else confidence)
