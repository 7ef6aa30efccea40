"""Hardware-aware pruning: measured table -> calibrated predictor -> search -> prune.

``HardwareSearch`` owns one model's latency plan, the target's table (built or read from
cache), and a predictor calibrated on whole-model measurements of that model on the target.
``prune_to_budget`` runs the method's importance scores through the budget search and
removes channels physically. ``measure_model`` exports, compiles and measures any model
variant on the target, so the caller can check the budget by measurement and feed the
result back (``add_measurement``) before searching again.
Invariant: every latency this module reports for a model was measured on the target's
runtime in a fresh process; predictions are labelled as predictions.
"""
from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeprune.export import export_onnx
from edgeprune.measure.lut_build import build_table
from edgeprune.measure.predictor import Predictor
from edgeprune.measure.protocol import MeasureSettings, measure
from edgeprune.prune import method_module
from edgeprune.prune.base import PruneContext, PruneResult, apply_counts
from edgeprune.prune.graph import PruneGraph
from edgeprune.prune.select import min_keep, uniform_counts
from edgeprune.search.budget import SearchResult, search_counts
from edgeprune.search.plan import build_plan, table_requests
from edgeprune.targets import require_runtime


@dataclass
class HardwareSearch:
    model: nn.Module
    example: torch.Tensor
    profile: dict[str, Any]
    precision: str
    threads: int
    settings: MeasureSettings
    calib: np.ndarray | None = None
    progress: bool = True
    samples: list[tuple[list[int], float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.graph = PruneGraph(copy.deepcopy(self.model).eval(), self.example)
        self.plan = build_plan(self.graph)
        self.widths = [g.channels for g in self.graph.groups]
        self.table = build_table(self.profile, table_requests(self.plan), precision=self.precision,
                                 threads=self.threads, progress=self.progress)
        self.predictor = Predictor(self.table["rows"], self.plan)

    def measure_model(self, model: nn.Module, repeats: int = 2) -> float:
        """p50 (ms) of ``model`` on the target: the smallest of ``repeats`` fresh-process measurements.

        The minimum, because a burst of load from a neighbour only ever makes a run slower; a single
        disturbed baseline measurement would otherwise skew a relative budget (``0.5x``).
        """
        mod = require_runtime(self.profile["runtime"])
        with tempfile.TemporaryDirectory(prefix="edgeprune-variant-") as tmp:
            onnx_path = export_onnx(model, tuple(self.example.shape), Path(tmp) / "m.onnx")["path"]
            art = mod.compile(Path(onnx_path), self.precision, self.calib, self.profile, Path(tmp) / "art")
            return min(float(measure(art.path, self.settings)["latency"]["p50_ms"]) for _ in range(repeats))

    def add_measurement(self, counts: list[int], measured_ms: float) -> dict[str, Any]:
        self.samples.append((list(counts), measured_ms))
        return self.predictor.calibrate(self.samples)

    def calibrate(self, uniform_ratio: float = 0.5) -> dict[str, Any]:
        """Fit the predictor on the unpruned model and one uniformly pruned variant."""
        self.add_measurement(self.widths, self.measure_model(self.model))
        counts = uniform_counts(self.widths, uniform_ratio, int(self.profile["channel_multiple"]))
        variant = self.prune_counts(counts, [np.ones(w) for w in self.widths])
        return self.add_measurement(counts, self.measure_model(variant))

    @property
    def baseline_ms(self) -> float:
        return self.samples[0][1]

    def prune_counts(self, counts: list[int], scores: list[np.ndarray]) -> nn.Module:
        """A copy of the model with ``counts[i]`` channels (highest scores) kept in group i."""
        graph = PruneGraph(copy.deepcopy(self.model).eval(), self.example)
        apply_counts(graph, scores, counts)
        return graph.model

    def search(self, ctx: PruneContext, method: str, budget_ms: float) -> tuple[PruneResult, SearchResult]:
        mod = method_module(method)
        if not hasattr(mod, "scores"):
            raise NotImplementedError(f"method {method} has no channel scores for the budget search")
        graph = PruneGraph(copy.deepcopy(self.model).eval(), self.example)
        scores = mod.scores(graph, ctx)
        multiple = int(self.profile["channel_multiple"])
        floors = [min_keep(w, multiple, ctx.min_ratio) for w in self.widths]
        found = search_counts(self.predictor, self.widths, scores, budget_ms, multiple, floors,
                              normalize=getattr(mod, "NORMALIZE", True))
        records = apply_counts(graph, scores, found.counts)
        return PruneResult(graph.model, method, 1 - sum(found.counts) / sum(self.widths), multiple, records), found
