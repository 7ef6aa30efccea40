"""Answering a latency question from interleaved rounds, at a stated confidence: met, missed or undecided.

A *question* compares one per-round figure with a threshold:
- ``Question.within_ms(subject, ms)``: is the subject's p50 within ``ms``? (figure: its per-round p50)
- ``Question.within_share(subject, reference, share)``: is the subject within ``share`` of the reference
  measured in the same rounds? (figure: the paired per-round ratio subject/reference, so a slow window
  of the machine that hits both candidates of a round cancels out)
- ``Question.faster(a, b)``: is ``a`` faster than ``b``? (figure: the paired per-round ratio a/b, vs 1)

Method: a distribution-free interval for the *median* of the per-round figure — the sign test inverted,
``scipy.stats.quantile_test(...).confidence_interval`` — whose bounds are order statistics of the rounds.
"met" (or "faster") when the upper bound is below the threshold, "missed" (or "slower") when the lower
bound is above it, else "undecided". Rounds are added one at a time between ``min_rounds`` and
``max_rounds`` and the question is asked after each, so each look uses a stricter level ``alpha`` per
side, chosen (``look_alpha``) so that over the whole sequence the chance of a wrong "met" — or of a
wrong "missed" — is at most ``1 - confidence`` (computed exactly for the sign test, whose worst case is
a true median right at the threshold). The sign test needs a handful of rounds before any answer is
possible (about 6 at 95%), so a quiet, clear case stops there; a close, noisy one goes on to the cap and
may end "undecided": the difference is smaller than the noise these rounds can resolve.

Invariants: host-side only — ``scipy`` is imported inside the functions that need it, so a device that
imports ``protocol`` (numpy and a runtime only) never touches it; the same per-round p50s give the same
answer; intervals are ``None`` on a side where these rounds are too few for the confidence.
"""
from __future__ import annotations

import functools
import math
import statistics
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

KINDS = ("within_ms", "within_share", "faster")
UNDECIDED = "undecided"


@dataclass(frozen=True)
class Question:
    """Is ``subject``'s per-round figure below ``threshold``? (see the module docstring for the kinds)."""

    kind: str
    subject: str
    threshold: float
    reference: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"question kind must be one of {KINDS}, got {self.kind!r}")
        if not (isinstance(self.threshold, (int, float)) and math.isfinite(self.threshold) and self.threshold > 0):
            raise ValueError(f"question threshold must be a positive number, got {self.threshold!r}")
        if (self.reference is None) != (self.kind == "within_ms"):
            raise ValueError(f"a {self.kind} question {'needs' if self.kind != 'within_ms' else 'takes no'} reference")
        if self.reference == self.subject:
            raise ValueError("a question compares two different candidates")

    @classmethod
    def within_ms(cls, subject: str, budget_ms: float) -> "Question":
        return cls("within_ms", subject, float(budget_ms))

    @classmethod
    def within_share(cls, subject: str, reference: str, share: float) -> "Question":
        return cls("within_share", subject, float(share), reference)

    @classmethod
    def faster(cls, a: str, b: str) -> "Question":
        return cls("faster", a, 1.0, b)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.subject,) if self.reference is None else (self.subject, self.reference)

    @property
    def unit(self) -> str:
        return "ms" if self.kind == "within_ms" else "x"

    def words(self) -> tuple[str, str]:
        """What "below the threshold" and "above it" are called for this question."""
        return ("faster", "slower") if self.kind == "faster" else ("met", "missed")

    def text(self) -> str:
        if self.kind == "within_ms":
            return f"is {self.subject}'s p50 within {self.threshold:.4g} ms?"
        if self.kind == "within_share":
            return f"is {self.subject} within {self.threshold:.4g}x of {self.reference}'s p50 (same rounds)?"
        return f"is {self.subject} faster than {self.reference}?"

    def figures(self, p50s: Mapping[str, Sequence[float]]) -> list[float]:
        """The per-round figure the question is about: p50 (ms) or the paired ratio subject/reference."""
        subject = [float(v) for v in p50s[self.subject]]
        if self.reference is None:
            return subject
        reference = [float(v) for v in p50s[self.reference]]
        if len(reference) != len(subject):
            raise ValueError(f"{self.subject} has {len(subject)} rounds but {self.reference} has {len(reference)}")
        return [s / r for s, r in zip(subject, reference)]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "subject": self.subject, "reference": self.reference,
                "threshold": self.threshold, "text": self.text()}


def _sign_test_error(min_rounds: int, max_rounds: int, upper_index: Sequence[int | None]) -> float:
    """P(some look claims "below" | true median at the threshold) for the sign-test rule.

    ``upper_index[n]``: the upper bound at n rounds is the ``upper_index[n]``-th smallest value (1-based),
    None when n rounds give no bound; "below" is claimed when at least that many values lie below.
    Each round lies below with probability 1/2, independently.
    """
    from scipy.stats import binom

    below = {k: float(binom.pmf(k, min_rounds, 0.5)) for k in range(min_rounds + 1)}
    error = 0.0
    for n in range(min_rounds, max_rounds + 1):
        if n > min_rounds:  # one more round: each path splits in two
            grown: dict[int, float] = {}
            for k, p in below.items():
                grown[k] = grown.get(k, 0.0) + p / 2
                grown[k + 1] = grown.get(k + 1, 0.0) + p / 2
            below = grown
        j = upper_index[n]
        if j is None:
            continue
        stopped = [k for k in below if k >= j]
        error += sum(below.pop(k) for k in stopped)
        # (the mirror-image "above" claims stop paths too, but removing them only lowers this error;
        # leaving them in keeps the bound simple and conservative)
    return error


@functools.lru_cache(maxsize=4096)
def _upper_index(n: int, alpha: float) -> int | None:
    """1-based rank of the one-sided (1 - alpha) upper bound for the median of n values, per scipy
    (``quantile_test``'s interval is made of order statistics, so the ranks 1..n give the rank itself)."""
    import numpy as np
    from scipy.stats import quantile_test

    ranks = np.arange(1, n + 1, dtype=float)
    high = quantile_test(ranks, q=0.5, p=0.5, alternative="less").confidence_interval(1 - alpha).high
    return int(high) if math.isfinite(high) else None


@functools.lru_cache(maxsize=256)
def look_alpha(min_rounds: int, max_rounds: int, confidence: float) -> float:
    """The per-look, per-side level: the largest one whose sequential error (see the module docstring)
    stays within ``1 - confidence``."""
    target = 1.0 - confidence
    if min_rounds == max_rounds:
        return target
    lo, hi = 0.0, target  # error(alpha) grows with alpha; error(lo) = 0 <= target
    for _ in range(40):
        mid = (lo + hi) / 2
        index = [None] * (max_rounds + 1)
        for n in range(min_rounds, max_rounds + 1):
            index[n] = _upper_index(n, mid)
        if _sign_test_error(min_rounds, max_rounds, index) <= target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-5 * target:
            break
    return lo


def median_bounds(values: Sequence[float], alpha: float) -> tuple[float | None, float | None]:
    """One-sided (1 - alpha) lower and upper bounds for the median of ``values``; None where too few.

    The upper bound is the order statistic ``scipy.stats.quantile_test`` gives; the lower one is its mirror
    image (the sign test's Binomial(n, 1/2) is symmetric), so both sides always use the same rank.
    """
    x = sorted(float(v) for v in values)
    j = _upper_index(len(x), alpha) if x else None
    if j is None:
        return None, None
    return x[len(x) - j], x[j - 1]


def spread(values: Sequence[float]) -> float:
    """Round-to-round spread: max/min (1.0 for one value)."""
    return max(values) / min(values) if len(values) > 1 and min(values) > 0 else 1.0


def answer(question: Question, p50s: Mapping[str, Sequence[float]], min_rounds: int, max_rounds: int,
           confidence: float) -> dict[str, Any]:
    """The question's answer after ``len(p50s[subject])`` rounds (see the module docstring).

    Returns the question, the estimate (median of the per-round figure) with its interval, the
    confidence, the rounds, the spread of every candidate involved, the decision ("met"/"missed",
    "faster"/"slower", or "undecided") and ``final``: no more rounds are needed or allowed.
    """
    figures = question.figures(p50s)
    rounds = len(figures)
    alpha = look_alpha(min_rounds, max_rounds, confidence)
    low, high = median_bounds(figures, alpha) if rounds >= min_rounds else (None, None)
    yes, no = question.words()
    if high is not None and high < question.threshold:
        decision = yes
    elif low is not None and low > question.threshold:
        decision = no
    else:
        decision = UNDECIDED
    spreads = {name: spread([float(v) for v in p50s[name]]) for name in question.names}
    return {"question": question.to_dict(), "estimate": statistics.median(figures), "interval": [low, high],
            "unit": question.unit, "confidence": confidence, "look_alpha": alpha, "rounds": rounds,
            "min_rounds": min_rounds, "max_rounds": max_rounds, "figures": figures,
            "spread": max(spreads.values()), "spreads": spreads, "figure_spread": spread(figures),
            "decision": decision, "final": decision != UNDECIDED or rounds >= max_rounds,
            "method": "sign-test interval for the median of the per-round figure (scipy.stats.quantile_test), "
                      "per-look level chosen so the whole sequence errs at most 1 - confidence per side"}


def p50_interval(p50s: Sequence[float], min_rounds: int, max_rounds: int,
                 confidence: float) -> list[float | None]:
    """One candidate's interval for its median per-round p50, at the level its comparison used."""
    return list(median_bounds(p50s, look_alpha(min_rounds, max_rounds, confidence)))


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return "?"
    return f"{value:.3f} ms" if unit == "ms" else f"{value:.3f}x"


def describe(result: Mapping[str, Any]) -> str:
    """One sentence: estimate, interval, confidence, rounds, spread and the decision."""
    unit = result["unit"]
    low, high = result["interval"]
    interval = (f"[{_num(low, unit)}, {_num(high, unit)}]" if low is not None or high is not None
                else "(no interval: too few rounds for this confidence)")
    q = result["question"]
    what = {"within_ms": f"{q['subject']} p50", "within_share": f"{q['subject']}/{q['reference']}",
            "faster": f"{q['subject']}/{q['reference']}"}[q["kind"]]
    threshold = _num(q["threshold"], unit)
    return (f"{what} {_num(result['estimate'], unit)} {interval} at {100 * result['confidence']:.0f}% confidence "
            f"vs {threshold}: {result['decision']} after {result['rounds']} round(s), "
            f"round-to-round spread up to {result['spread']:.2f}x")


def fastest_vs_runner_up(p50s: Mapping[str, Sequence[float]]) -> Question | None:
    """"Is the fastest candidate (by median per-round p50 so far) faster than the runner-up?"; None for one."""
    if len(p50s) < 2:
        return None
    order = sorted(p50s, key=lambda name: (statistics.median(p50s[name]), name))
    return Question.faster(order[0], order[1])
