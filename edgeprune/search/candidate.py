"""A candidate of the budget search: a set of channels of the original network (or a network the search trained),
its predicted and measured latency on the target and its scores on the held-out images.

Invariant: ``key`` names the sub-network, so two candidates with equal keys are the same network and one of them
is dropped; a candidate carrying weights the search trained (``model``) is a different network from the same
channels on the original weights."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn


def trained_key(family: str, counts: list[int]) -> tuple:
    """The dedup key of a trained candidate of ``family`` ending on ``counts`` (``Candidate.key``)."""
    return ("trained", family, tuple(counts))


@dataclass
class Candidate:
    name: str
    counts: list[int]
    keep: dict[int, list[int]]      # group index -> kept channel indices of the original network
    predicted_ms: float
    holdout_top1: float | None = None
    note: str = ""
    measurements: list[float] = field(default_factory=list)  # every figure measured for it on the target
    probe_top1: float | None = None  # held-out top-1 after the finalists' short fine-tune
    model: nn.Module | None = None   # its own trained weights (progressive candidates); None: the original's
    trained_images: int = 0          # training images its weights saw inside the search (mini-batches x batch size)

    def add_note(self, text: str) -> None:
        """Append ``text`` to its note ("; " between notes)."""
        self.note = f"{self.note}; {text}" if self.note else text

    @property
    def measured_ms(self) -> float | None:
        """The mean of its measurements (None before the first)."""
        return float(np.mean(self.measurements)) if self.measurements else None

    @property
    def family(self) -> str:
        """The strategy that proposed it: knapsack, progressive, greedy, uniform or random."""
        return self.name.split()[0]

    @property
    def kind(self) -> str:
        """Its family, and whether it carries weights the search trained: uniform pruning on the original weights
        and the progressive uniform schedule are two kinds (``Arbiter.finalists``)."""
        return f"{self.family} (trained)" if self.model is not None else self.family

    @property
    def key(self) -> tuple:
        """Which channels of the original network it keeps: equal keys are the same sub-network. A trained
        candidate is a different network from the same channels with the original weights: its key is its
        name's kind and its counts."""
        if self.model is not None:
            return trained_key(self.family, self.counts)
        return tuple(tuple(self.keep[g]) for g in sorted(self.keep))

    def row(self, widths: list[int]) -> dict[str, Any]:
        shares = [c / w for c, w in zip(self.counts, widths)]
        return {"name": self.name, "predicted_ms": self.predicted_ms, "measured_ms": self.measured_ms,
                "measurements": len(self.measurements), "measured_each_ms": list(self.measurements),
                "holdout_top1": self.holdout_top1, "probe_top1": self.probe_top1,
                "kept_share": sum(self.counts) / sum(widths), "min_group_share": min(shares),
                "counts": list(self.counts), "trained": self.model is not None, "trained_images": self.trained_images,
                "note": self.note}

