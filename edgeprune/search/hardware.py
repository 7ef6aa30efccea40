"""Hardware-aware pruning: measured table -> calibrated predictor -> search -> prune.

``HardwareSearch`` owns one model's latency plan (layers, with the runtime's fused units in
place of the layers it fuses: ``search.units``), the target's table (built or read from
cache), and a predictor calibrated on whole-model measurements of that model on the target.
``prune_to_budget`` runs the method's importance scores through the budget search and
removes channels physically. ``measure_model`` exports, compiles and measures any model
variant on the target, so the caller can check the budget by measurement and feed the
result back (``add_measurement``) before searching again. ``calibrate`` measures its models
(unpruned and uniformly pruned variants) paired against the unpruned model (``measure.paired``: alternating
short bursts in fresh processes, so the load phases of a shared machine cancel out of each ratio) and fits on
them; every later measurement is a ratio to a reference on the calibration's scale: to the unpruned model, or, once
the search has an aim (``near_ms``, the budget), to the calibration model nearest it (``NEAR``, below: a busy phase
slows models by their size, so a reference of the candidates' size cancels it where the unpruned one does not). A
calibration that ran while the machine was busier than it is a moment later is measured again
(``CALIBRATION_CHECK``, below).
With ``device`` (a connected ``RemoteDevice``) the table is measured on that board
(``model_table.table_builder``) and every model is compiled and measured there, exactly as a
build's final measurement with ``--device`` does (``remote_compile_and_measure`` without
measuring, then ``remote_measure_interleaved``).
Invariants: every latency this module reports for a model was measured on the target's
runtime (on the device when one is given) in a fresh process; predictions are labelled as predictions. The table is sampled
and the search chooses counts at ``multiple`` — the channel multiple the build rounds to
(``--round-to``, or the profile's multiple for the chosen precision), combined with a group's
grouped-conv slices — never at a multiple read from the profile behind the caller's back;
layers in ``ignored_layers`` (``--keep``) are never a group, so they keep every channel.
With ``channel_block`` (the build sets it when the user gave no ``--round-to``) the runtime's channel
block is read off the measured table (``measure.staircase``): where latency steps every 16 output
channels on a grid of 8, a group at least two blocks wide keeps multiples of the block (lcm of its
multiple and the block), since 40 channels cost what 48 cost; narrower groups keep their multiple.
Every allocation — uniform candidates, schedules, random ones, floors, the knapsack's options — uses
``multiples``, so all of them see the same grid.
"""
from __future__ import annotations

import copy
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from edgeprune.errors import UserInputError
from edgeprune.export import export_onnx
from edgeprune.measure.paired import measure_paired
from edgeprune.measure.predictor import Predictor
from edgeprune.measure.protocol import MeasureSettings
from edgeprune.measure.staircase import BlockEvidence, channel_block as find_channel_block
from edgeprune.profiles import channel_multiple
from edgeprune.prune import check_options
from edgeprune.prune.base import PruneContext, PruneResult, apply_counts, multiples, no_groups_error
from edgeprune.prune.graph import PruneGraph
from edgeprune.prune.select import min_keep, round_channels, uniform_counts
from edgeprune.search.budget import SearchResult, search_counts
from edgeprune.ui import info

if TYPE_CHECKING:
    from edgeprune.search.settings import SearchSettings
from edgeprune.search.model_table import table_builder
from edgeprune.search.plan import build_plan
from edgeprune.search.units import plan_with_units
from edgeprune.targets import require_runtime


# The predictor's calibration: the unpruned model plus variants with these shares of every group's channels
# removed, measured paired against the unpruned model in this many fresh processes (``measure.paired``).
CALIBRATION_RATIOS = (0.25, 0.5, 0.75)  # the line spans the search's range, deep cuts included
CALIBRATION_ROUNDS = 3
CALIBRATION_MIXED = 8  # mixed variants of each kind (``mixed_counts``): the weight term's and the correction's evidence
# How the mixed variants cut (``mixed_counts``): "random" (a random half of the groups, each cut to its own depth,
# 25-75% kept: every group seen at several widths) since session 27, "halves" (a random half of the groups halved)
# before. Fitted side by side on one paired run of ResNet-18 at 96 px on OpenVINO, random depths priced 30 random
# variants 80% within ±10% (halves 73%) and 30 of the search's own candidates 100% (halves 83%).
# Since session 38 "random+random-all": those 8 plus 8 that cut *every* group (10-100% kept), as the search's
# candidates do. Models that leave half the groups whole taught MobileNetV2 @96's per-group correction prices that
# did not carry to models cutting all of them. Fitted on the figures of 13 stored runs' paired measurements
# (bench/RESULTS.md §4, session 38), the 20 models priced 30 random variants within ±10% better in 8, level in 4,
# one variant worse in one (MobileNetV2 @96 on OpenVINO 67-83% -> 87-97%), for 8 more models to measure.
MIXED_KINDS = ("halves", "random", "random-all")
CALIBRATION_MIXED_KIND = "random+random-all"
MIXED_SEED = 20261201
# The calibration's check: right after the calibration, the unpruned model is measured once more on its own (one
# fresh process). A check more than this share faster than the calibration's figure for it means the calibration
# ran in a busier phase than the machine is in now, and a busy phase does not slow every model alike: a neighbour
# streaming memory on the other core slowed ResNet-18 @96 on OpenVINO by 25-30% and its uniform-0.25 cut by 4%,
# so its ratio read 0.42 against 0.48-0.56 (bench/RESULTS.md §4, session 36). Session 35's predictor_accuracy run
# of that model lost 70 points of its within-±10% share to such a phase (calibration 6.27 ms, 5.23 ms a minute
# later). The calibration is then measured again, at most ``CALIBRATION_REPEATS`` more times, and the pass whose
# unpruned figure is lowest (the least disturbed machine) is kept. Quiet runs on the same box differ by up to
# 10-12% from each other, hence the margin.
CALIBRATION_CHECK = 0.12
CALIBRATION_REPEATS = 2
REFERENCE = "__unpruned__"  # the paired measurement's reference: the unpruned model
# After the calibration, once the search has an aim (``near_ms``: the budget), models are measured paired against a
# *near reference* instead: the calibration model whose figure is closest to the aim, and put on the scale by its
# calibrated figure. A busy phase of memory traffic slows a model by its size: a neighbour streaming 256 MB on the
# other core slowed ResNet-18 @96 on OpenVINO by 13% and its 0.33x cuts less, so 8 random ~0.3x allocations
# measured against the unpruned model read 9.9% (worst 11.1%) off their quiet figures, and 0.6% (worst 1.2%)
# against a uniform model of their latency (bench/near_reference.py, bench/RESULTS.md §5, session 39). In a search,
# candidates measured in such a phase read fast and the next batch slow (session 39, seed 1: 1.05-1.16 ms, then
# 1.37-1.41 ms for allocations of the same predicted latency), and the retry after a miss aimed 11% low.
NEAR = "__near__"


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
    multiple: int | None = None            # None: the profile's multiple for ``precision``
    ignored_layers: tuple[str, ...] = ()   # layers kept whole (module names or prefixes)
    device: Any = None                     # a connected RemoteDevice: table, compile and measure there
    channel_block: bool = False            # read the runtime's channel block off the table; wide groups use it
    calibration: dict[str, Any] | None = field(default=None, init=False)  # what ``calibrate`` measured
    block: BlockEvidence | None = field(default=None, init=False)       # the channel block found (``channel_block``)
    near_ms: float | None = None            # the search's aim (ms): later models are measured against the
    # calibration model nearest it (``NEAR``); None: against the unpruned model
    _reference: Path | None = field(default=None, init=False, repr=False)
    _near_arts: dict[str, Path] = field(default_factory=dict, init=False, repr=False)  # near references, by name
    _reference_tmp: Any = field(default=None, init=False, repr=False)  # their TemporaryDirectory

    def __post_init__(self) -> None:
        if self.multiple is None:
            self.multiple = channel_multiple(self.profile, self.precision)
        if isinstance(self.multiple, bool) or not isinstance(self.multiple, int) or self.multiple < 1:
            raise UserInputError(f"channel multiple must be a positive whole number, got {self.multiple!r}",
                                 "pass e.g. --round-to 8")
        self.ignored_layers = tuple(self.ignored_layers)
        self.graph = self._graph()
        if not self.graph.groups:
            raise no_groups_error()
        self.layer_plan = build_plan(self.graph)
        self.widths = [g.channels for g in self.graph.groups]
        self.multiples = multiples(self.graph, self.multiple)
        build = table_builder(self.profile, self.precision, self.threads, progress=self.progress,
                              device=self.device, multiple=self.multiple)
        self.plan, self.table = plan_with_units(self.graph.model, self.layer_plan, self.widths, build)
        self.predictor = Predictor(self.table["rows"], self.plan, weight_layers=self.layer_plan)
        if self.channel_block:
            self.block = find_channel_block(self.table["rows"].values(), self.multiple)
            self.multiples = blocked_multiples(self.widths, self.multiples, self.block.block)

    def block_report(self) -> dict[str, Any] | None:
        """The channel block for the report: what was found, on which evidence, and which groups use it."""
        if self.block is None:
            return None
        wide = [g.root_name for g, m, m0 in zip(self.graph.groups, self.multiples, multiples(self.graph, self.multiple))
                if m != m0]
        return {**self.block.to_dict(), "summary": self.block.summary(), "groups_on_block": wide,
                "groups": len(self.widths)}

    def _graph(self) -> PruneGraph:
        return PruneGraph(copy.deepcopy(self.model).eval(), self.example, self.ignored_layers)

    def _compile(self, model: nn.Module, folder: Path) -> Path:
        """Export ``model`` and compile it for the target (on the device, if any); the artifact's folder."""
        onnx_path = Path(export_onnx(model, tuple(self.example.shape), folder / "m.onnx")["path"])
        if self.device is None:
            mod = require_runtime(self.profile["runtime"])
            return Path(mod.compile(onnx_path, self.precision, self.calib, self.profile, folder / "art").path)
        from edgeprune.remote.remote_target import remote_compile_and_measure

        result = remote_compile_and_measure(self.device, onnx_path, self.profile, self.precision, self.calib, None,
                                            self.settings, 1, folder / "remote", force=True, measure=False)
        return Path(result["artifact"])

    def measure_models(self, models: dict[str, nn.Module], rounds: int = 2) -> dict[str, float]:
        """name -> p50 (ms) of each model on the target.

        Here (no device): paired measurement (``measure.paired``) — ``rounds`` fresh processes, each timing
        every model in alternating short bursts against a reference, so a phase of a shared machine's
        load cancels out of each ratio. The calibration's reference is the unpruned model, and its figures are
        ratios times the unpruned model's quiet-phase latency (``baseline_ms``). Later, the reference is the
        calibration model nearest ``near_ms`` when the search has set it (``NEAR``, ``near_reference``), else the
        unpruned model, and each figure is the ratio times the reference's calibrated figure. Every figure this
        search compares with its budget is thus on one scale. On a device: compiled there, measured interleaved
        (A B C, A B C, ...), one fresh process per measurement, each model's fastest round."""
        with tempfile.TemporaryDirectory(prefix="edgeprune-variant-") as tmp:
            if self.device is not None:
                from edgeprune.remote.remote_target import remote_measure_interleaved

                arts = {name: self._compile(m, Path(tmp) / name) for name, m in models.items()}
                res = remote_measure_interleaved(self.device, arts, self.settings, rounds)
                return {name: float(r["p50_ms_min"]) for name, r in res.items()}
            # the unpruned model is compiled once: the reference artifact every paired measurement uses
            arts = {name: self._reference_artifact() if m is self.model else self._compile(m, Path(tmp) / name)
                    for name, m in models.items()}
            near = self.near_reference()
            if near is not None:  # against a calibration model of about the aim's latency, on its calibrated figure
                paired = measure_paired({NEAR: near["artifact"], **arts}, self.settings, rounds,
                                        reference=NEAR, reference_ms=near["ms"])
            elif self.samples:  # a baseline exists: every model against the unpruned one, on its scale
                paired = measure_paired({REFERENCE: self._reference_artifact(), **arts}, self.settings, rounds,
                                        reference=REFERENCE, reference_ms=self.baseline_ms)
            else:  # the calibration: the first model (the unpruned one) is the reference
                paired = measure_paired(arts, self.settings, rounds)
        return {name: float(paired[name]["p50_ms"]) for name in models}

    def _reference_dir(self) -> Path:
        """The folder the compiled references live in (kept until the search is garbage-collected)."""
        if self._reference_tmp is None:
            self._reference_tmp = tempfile.TemporaryDirectory(prefix="edgeprune-reference-")
        return Path(self._reference_tmp.name)

    def _reference_artifact(self) -> Path:
        """The unpruned model compiled once for this search."""
        if self._reference is None:
            self._reference = self._compile(self.model, self._reference_dir() / REFERENCE)
        return self._reference

    def near_reference(self) -> dict[str, Any] | None:
        """The calibration model whose calibrated figure is nearest ``near_ms`` (by ratio; the unpruned model
        excluded), each compiled once: {"name", "counts", "ms", "artifact"}; None before the calibration, without an
        aim, or on a device. Recorded, with the aim, in ``calibration["near_reference"]``."""
        if self.device is not None or not self.near_ms or not self.calibration:
            return None
        models = [(n, m) for n, m in self.calibration["models"].items() if n != "unpruned"]
        if not models:
            return None
        name, best = min(models, key=lambda nm: abs(math.log(nm[1]["ms"] / self.near_ms)))
        if name not in self._near_arts:
            self._near_arts[name] = self._compile(self.prune_counts(list(best["counts"])),
                                                  self._reference_dir() / f"near-{name}")
        record = {"name": name, "counts": list(best["counts"]), "ms": float(best["ms"])}
        self.calibration["near_reference"] = {**record, "aim_ms": self.near_ms}
        return {**record, "artifact": self._near_arts[name]}

    def measure_model(self, model: nn.Module, repeats: int = 2) -> float:
        """p50 (ms) of ``model`` on the target, measured as ``measure_models`` does (``repeats`` processes)."""
        return self.measure_models({"model": model}, repeats)["model"]

    def add_measurement(self, counts: list[int], measured_ms: float) -> dict[str, Any]:
        self.samples.append((list(counts), measured_ms))
        return self.predictor.calibrate(self.samples)

    def calibrate(self, uniform_ratios: tuple[float, ...] = CALIBRATION_RATIOS, rounds: int = CALIBRATION_ROUNDS,
                  mixed: int = CALIBRATION_MIXED, mixed_kind: str = CALIBRATION_MIXED_KIND,
                  repeats: int = CALIBRATION_REPEATS) -> dict[str, Any]:
        """Fit the predictor on the unpruned model, uniformly pruned variants (``uniform_ratios``: shares of
        channels removed) and ``mixed`` seeded variants of each of ``mixed_kind``'s kinds that cut some or all groups
        (``mixed_counts``), all measured together (``measure_models``); the unpruned model is the first sample
        (``baseline_ms``). The mixed variants tell the weight term and the measured correction
        (``Predictor.calibrate``) which groups the table misprices, before the search leans on it. Variants that
        round to the same counts are measured once. After each pass the unpruned model is measured once more
        (``CALIBRATION_CHECK``); while that check is faster than the pass's own figure by more than the margin, the
        pass is measured again (at most ``repeats`` more passes; 0 turns the check off) and the pass with the
        lowest unpruned figure is kept. ``fit["calibration"]["passes"]`` records every pass and check."""
        if self.samples:
            raise ValueError("calibrate() runs once, before any other measurement")
        points = {"unpruned": list(self.widths)}
        for ratio in uniform_ratios:
            counts = uniform_counts(self.widths, ratio, multiples=self.multiples)
            if counts not in points.values():
                points[f"uniform-{ratio:g}"] = counts
        for i, counts in enumerate(mixed_counts(self.widths, self.multiples, mixed if len(self.widths) > 1 else 0,
                                                mixed_kind)):
            if counts not in points.values():
                points[f"mixed-{i + 1}"] = counts
        models = {name: self.model if name == "unpruned" else self.prune_counts(c) for name, c in points.items()}
        passes: list[dict[str, Any]] = []
        kept: dict[str, float] | None = None
        for n in range(1 + max(0, repeats)):
            measured = self.measure_models(models, rounds)
            if kept is None or measured["unpruned"] < kept["unpruned"]:
                kept, kept_pass = measured, n
            record: dict[str, Any] = {"unpruned_ms": measured["unpruned"], "check_ms": None}
            passes.append(record)
            if repeats <= 0:
                break
            # the check: the unpruned model alone, one fresh process, measured as every model is
            record["check_ms"] = check = self.measure_models({"unpruned": self.model}, 1)["unpruned"]
            if check >= measured["unpruned"] * (1 - CALIBRATION_CHECK):
                break
            if n < repeats:
                info(f"      calibration measured again: the unpruned model measured {check:.3f} ms in a check right "
                     f"after it, against {measured['unpruned']:.3f} ms during it (the machine was busier while it "
                     "ran, and a busy phase does not slow every model alike)")
            else:
                pairs = ", ".join(f"{p['unpruned_ms']:.3f} vs {p['check_ms']:.3f}" for p in passes)
                info(f"      the machine stayed busier during the calibration than in the checks after it ({pairs} "
                     f"ms) over {len(passes)} passes; the least disturbed pass is kept: predictions may be off on "
                     "this machine")
        for n, record in enumerate(passes):
            record["kept"] = n == kept_pass
        for name, counts in points.items():
            self.samples.append((list(counts), kept[name]))
        fit = self.predictor.calibrate(self.samples)
        fit["calibration"] = {"rounds": rounds, "mixed_kind": mixed_kind,
                              "statistic": "paired bursts: median ratio to the unpruned model x its "
                                           "quiet-phase (25th percentile) burst p50",
                              "check": {"margin": CALIBRATION_CHECK, "repeats": repeats},
                              "passes": passes,
                              "models": {name: {"counts": c, "ms": kept[name]} for name, c in points.items()}}
        self.calibration = fit["calibration"]
        return fit

    def fastest_counts(self, min_ratio: float) -> list[int]:
        """Every group at its floor: the fastest model a search may return."""
        return [min_keep(w, m, min_ratio) for w, m in zip(self.widths, self.multiples)]

    @property
    def baseline_ms(self) -> float:
        return self.samples[0][1]

    def prune_counts(self, counts: list[int], scores: list[np.ndarray] | None = None) -> nn.Module:
        """A copy of the model with ``counts[i]`` channels (highest scores) kept in group i; without ``scores``,
        every channel scores alike (a model to time, whose weights do not matter: the calibration's, the near
        reference's)."""
        graph = self._graph()
        apply_counts(graph, [np.ones(w) for w in self.widths] if scores is None else scores, counts)
        return graph.model

    def search(self, ctx: PruneContext, method: str, budget_ms: float,
               settings: SearchSettings | None = None) -> tuple[PruneResult, SearchResult]:
        """Counts within ``budget_ms`` by prediction, from ``method``'s channel importance; the pruned copy.

        ``settings.strategy``: ``knapsack`` (iterative knapsack + candidates + adaptive-BN arbitration,
        ``search.allocate``) or ``greedy`` (``budget.search_counts`` on the unpruned network's scores).
        """
        from edgeprune.prune import importance as importance_registry
        from edgeprune.search.allocate import Allocator
        from edgeprune.search.settings import SearchSettings

        settings = settings or SearchSettings(strategy="greedy")
        settings.check()
        imp = importance_registry.get(method)
        check_options(method, {k: v for k, v in ctx.options.items() if k != "method"})
        if settings.strategy == "knapsack":
            return Allocator(self, ctx, method, settings).run(budget_ms)
        graph = self._graph()
        scores = imp.scores(graph, ctx)
        floors = [min_keep(w, m, ctx.min_ratio) for w, m in zip(self.widths, self.multiples)]
        found = search_counts(self.predictor, self.widths, scores, budget_ms, self.multiples, floors,
                              normalize=imp.normalize)
        found.importance = imp.name
        records = apply_counts(graph, scores, found.counts)
        ratio = 1 - sum(found.counts) / sum(self.widths)
        return PruneResult(graph.model, method, ratio, self.multiple, records), found


def mixed_counts(widths: list[int], group_multiples: list[int], n: int, kind: str = CALIBRATION_MIXED_KIND,
                 seed: int = MIXED_SEED) -> list[list[int]]:
    """``n`` seeded calibration allocations (kept channels per group) that cut some groups and not others.

    ``halves``: each group, with probability 1/2, keeps half its channels, else all. ``random``: each group, with
    probability 1/2, keeps a share drawn uniformly from [0.25, 0.75], else all. ``random-all``: every group keeps a
    share drawn uniformly from [0.1, 1]. Kinds joined by ``+`` give ``n`` of each, in that order (each part drawn
    as it would be alone). Counts are on each group's multiple, at least ``min_keep(.., 0.1)``; duplicates and the
    unpruned allocation may occur (the caller measures each distinct one once)."""
    parts = kind.split("+")
    if len(parts) > 1:
        return [c for part in parts for c in mixed_counts(widths, group_multiples, n, part, seed)]
    if kind not in MIXED_KINDS:
        raise ValueError(f"unknown mixed calibration kind {kind!r} (one of {', '.join(MIXED_KINDS)}, or several "
                         "joined by '+')")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        cut = rng.random(len(widths)) < 0.5
        depth = rng.random(len(widths)) if kind != "halves" else np.zeros(len(widths))  # halves: draws as before
        counts = []
        for w, m, c, u in zip(widths, group_multiples, cut, depth):
            if kind == "halves":
                share = 0.5 if c else 1.0
            elif kind == "random":
                share = 0.25 + 0.5 * u if c else 1.0
            else:
                share = 0.1 + 0.9 * u
            counts.append(w if share >= 1.0 else round_channels(w * share, w, m, min_keep(w, m, 0.1)))
        out.append(counts)
    return out


def blocked_multiples(widths: list[int], group_multiples: list[int], block: int) -> list[int]:
    """Per group: lcm(its multiple, ``block``) where the group is at least two of those wide, else its multiple.

    A narrower group keeps its finer choice (ResNet-20's 16-channel groups keep 8 on a block of 16):
    one block would leave it nothing to cut."""
    out = []
    for w, m in zip(widths, group_multiples):
        b = math.lcm(int(m), int(block))
        out.append(b if w >= 2 * b else m)
    return out
