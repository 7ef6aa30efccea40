"""The default budget search: iterative latency-saliency knapsack, then arbitration by adaptive BatchNorm.

1. **Iterative schedule** (HALP): the predicted latency walks from the unpruned model's down to the
   budget in ``steps`` equal steps. Each step scores the channels of the network *as it stands*
   (the run's importance, e.g. BN Taylor), solves the knapsack with the neighbours' current widths
   (``knapsack.solve``), removes the dropped channels physically and fine-tunes the smaller network
   for ``step_batches`` mini-batches (a physically pruned network is the masked one without its
   zeros, so this is HALP's masked fine-tune). The original index of every kept channel is tracked.
2. **Candidates** that meet the budget by prediction: the iterative result, the one-shot knapsack
   on the unpruned network's scores, the greedy search (``budget.search_counts``), uniform pruning
   (every group loses the same share, the least pruning that meets the budget) with the run's
   importance and with L1, and ``random_candidates`` random allocations scaled to the budget
   (EagleEye), each a set of channels of the *original* network with its weights; and two *trained*
   candidates that keep the weights the search trained: the iterative schedule's result with its fine-tuned
   weights, and two progressive ones, ``progressive_steps`` knapsack steps (resp. uniform steps) each followed
   by ``step_batches`` mini-batches of fine-tuning (pruning while training, as Gate Decorator does, but where
   latency is bought; the uniform one is the same training on the baseline allocation).
   On ResNet-20 at 0.5x on OpenVINO, networks pruned while training scored 61-66% top-1 right after the cut
   (BN re-estimated) against 11-27% for one-shot cuts, and after the same fine-tune Gate Decorator's model was
   0.5 points ahead of the search without these candidates (bench/RESULTS.md §5).
3. **Measurement, then arbitration** (EagleEye): every candidate is compiled and measured on the target
   (paired against the unpruned model in alternating bursts, 2 fresh processes: ``measure.paired``); every
   measurement refits the predictor, and each of the three schedules (iterative knapsack, progressive knapsack,
   progressive uniform) is steered by its own measurements (``steer``): while it misses the budget, or lands more
   than ``near`` under it, another round reruns it at an aim taken from those measurements (``refits`` rounds
   at most; the one-shot candidates are regenerated with the refitted predictor in each round). Only candidates within
   the budget *by measurement* are compared (all of them when none is), because the knapsack finds exactly
   the allocations the predictor prices too cheaply. Each compared candidate's BN statistics are re-estimated on ``bn_images``
   training images (``prune.bn.recalibrate_bn``) and its top-1 is taken on ``holdout_images`` held-out
   *training* images (never the test set). That score sits near chance after a deep cut, so the
   ``finalists`` best (the best of each kind first) are then fine-tuned for ``finalist_batches``
   mini-batches from those weights and scored again; the most accurate finalist wins (ties: the faster
   prediction). The caller measures it on the target and fine-tunes it like any pruned model, from the weights
   of the winner's short fine-tune (the search trained them: a one-shot winner returned with its untrained
   weights threw away 40 mini-batches; on ResNet-18 at 96 px it scored 59.6% right after the cut and 91.2%
   after them, bench/RESULTS.md §5), counted in its ``trained_images`` like the schedules' training.

Because uniform pruning is a candidate (and, as its own kind, always a finalist when within the budget by
measurement and ``finalists`` >= 7, the number of kinds), the search loses to it only through the proxy's error (a short
fine-tune ranks sub-networks well but not perfectly) or the measurement's. Trained candidates have had more
training than the one-shot ones, and that was most of why they won (bench/RESULTS.md §5: given the same total
training, uniform pruning matched the search on ResNet-20 at 0.5x); the progressive uniform candidate is there so
that the knapsack's allocation also meets uniform's at equal training, and the best one-shot finalist is trained on
to the trained finalists' training before the choice (``Allocator.level``), so that pruning while training meets
pruning at once, then training, at equal training too.
Invariants: every candidate's predicted latency is within the budget; every group keeps at least
its floor and one channel; the result lists every candidate with its predicted latency, held-out
top-1 and the share of channels it keeps, and names the winner.
"""
from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset
from tqdm import tqdm

from edgeprune.errors import UserInputError
from edgeprune.prune import importance as importance_registry
from edgeprune.prune.base import PruneContext, PruneResult, keep_lists
from edgeprune.prune.bn import recalibrate_bn
from edgeprune.prune.graph import PruneGraph
from edgeprune.prune.select import min_keep, round_channels, uniform_counts
from edgeprune.search import knapsack
from edgeprune.search.budget import BudgetError, SearchResult, kept_importance, search_counts
from edgeprune.ui import info

STRATEGIES = ("knapsack", "greedy")
STEERED = ("knapsack", "progressive", "uniform")  # the schedules each steered by their own measurements


@dataclass
class SearchSettings:
    """How the budget search runs (``--search`` and friends)."""

    strategy: str = "knapsack"     # knapsack (this module) or greedy (budget.search_counts alone)
    steps: int = 3                 # knapsack schedule steps
    step_batches: int = 30         # fine-tune mini-batches between steps
    step_lr: float = 0.01
    batch_size: int = 64
    max_cut: float = 0.5           # no group loses more than this share unless the budget needs it
    random_candidates: int = 4
    refits: int = 2                # extra candidate rounds after refitting the predictor on measurements
    near: float = 0.06             # a schedule whose candidate lands more than this share under the budget aims back up
    finalists: int = 8             # candidates given a short fine-tune before the choice (0: BN re-estimation alone)
    finalist_batches: int = 40     # mini-batches of that fine-tune
    calibration_mixed: int = 8     # measured models of each mixed kind (``hardware.CALIBRATION_MIXED_KIND``)
    progressive_steps: int = 8     # steps of the progressive candidate (pruned while fine-tuning); 0: none
    settle: float = 0.5            # share of those steps that train the final network after its last cut
    fill: bool = True              # the progressive uniform schedule's last cut is topped up to its aim (``_fill``)
    top_up: bool = True            # the best one-shot finalist is fine-tuned to the progressive candidates' training
                                   # before the choice (``level``), and a winner still short of it before it is
                                   # returned (``top_up``)
    bn_images: int = 512
    holdout_images: int = 1000
    seed: int = 0
    channel_block: bool = True     # use the runtime's channel block read off the table (off when --round-to is given)

    @property
    def progressive_images(self) -> int:
        """Training images the progressive candidate's weights see inside the search (0 when it is off)."""
        return self.progressive_steps * self.step_batches * self.batch_size

    def training_images(self, finalists: bool) -> int:
        """Training images the most trained candidate sees inside the search: the progressive schedule's, plus the
        finalists' fine-tune when ``finalists`` were probed (0 when nothing trains)."""
        return self.progressive_images + (self.finalist_batches * self.batch_size if finalists else 0)

    def check(self) -> None:
        if self.strategy not in STRATEGIES:
            raise UserInputError(f"unknown search strategy {self.strategy!r}", f"choose one of: {', '.join(STRATEGIES)}")
        if not 0.0 < self.max_cut <= 1.0:
            raise UserInputError(f"maximum cut per layer must be in (0, 1], got {self.max_cut}", "pass e.g. --max-cut 0.5")
        if self.finalists < 0 or self.finalist_batches < 0:
            raise UserInputError("finalists and their fine-tune batches must be 0 or more",
                                 "pass e.g. --search-finalists 6 --search-finalist-batches 40")
        if self.progressive_steps < 0:
            raise UserInputError(f"progressive steps must be 0 or more, got {self.progressive_steps}",
                                 "pass e.g. --search-progressive-steps 8, or 0 for no progressive candidate")
        if not 0.0 <= self.near < 1.0:
            raise UserInputError(f"the near-budget share must be in [0, 1), got {self.near}", "pass e.g. --search-near 0.06")
        if not 0.0 <= self.settle < 1.0:
            raise UserInputError(f"the settling share must be in [0, 1), got {self.settle}",
                                 "pass e.g. --search-settle 0.5")
        if self.calibration_mixed < 0:
            raise UserInputError(f"calibration models must be 0 or more, got {self.calibration_mixed}",
                                 "pass e.g. --search-calibration 8")


def split_train(ds, holdout: int, seed: int = 0) -> tuple[Any, Any]:
    """(fit, held-out) subsets of ``ds``: ``holdout`` items of a seeded permutation are held out."""
    n = len(ds)
    holdout = max(1, min(int(holdout), n // 5)) if n > 1 else 0
    order = np.random.default_rng(seed + 104729).permutation(n)
    return Subset(ds, [int(i) for i in order[holdout:]]), Subset(ds, [int(i) for i in order[:holdout]])


def _evaluate(model: nn.Module, ds) -> float:
    from edgeprune.train import evaluate

    return evaluate(model, ds, progress=False)


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
        and the progressive uniform schedule are two kinds (``Allocator.finalists``)."""
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


def steer(points: list[tuple[list[int], float]], budget_ms: float, near: float, predict) -> float | None:
    """The next aim (in ms of ``predict``, the refitted predictor) of a schedule whose candidates measured
    ``points`` ((counts, ms) pairs), or None when it needs no other round: its closest candidate within the
    budget is at most ``near`` under it (or ``near`` is 0 and one is within it).

    It aims at ``1 - near / 2`` of the budget. With a candidate on each side of the budget, by the secant
    through the two closest, each priced again by the refitted predictor (so both ends are in the same units:
    aims from earlier rounds are in the units of a predictor that has since moved); with one side only, by
    scaling the closest candidate's predicted latency by the ratio of that target to its measurement. So a
    miss aims lower, and a candidate far under the budget aims back up instead of giving away latency the
    budget allows (on ResNet-20 at 0.5x on OpenVINO the round after a miss landed 12-22% under,
    bench/RESULTS.md §5)."""
    if not points:
        return None
    under = [p for p in points if p[1] <= budget_ms]
    over = [p for p in points if p[1] > budget_ms]
    if under and (near <= 0 or max(m for _, m in under) >= budget_ms * (1 - near)):
        return None
    target = budget_ms * (1 - near / 2)
    lo = max(under, key=lambda p: p[1]) if under else None
    hi = min(over, key=lambda p: p[1]) if over else None
    if lo is not None and hi is not None:
        p_lo, p_hi = predict(lo[0]), predict(hi[0])
        if p_hi > p_lo:
            return p_lo + (target - lo[1]) * (p_hi - p_lo) / (hi[1] - lo[1])
    counts, ms = lo if lo is not None and (hi is None or budget_ms - lo[1] < hi[1] - budget_ms) else hi
    return predict(counts) * target / ms


class Allocator:
    """The knapsack strategy over one ``HardwareSearch`` (its graph, predictor, multiples)."""

    def __init__(self, hs, ctx: PruneContext, importance: str, settings: SearchSettings):
        self.hs, self.ctx, self.s = hs, ctx, settings
        self.leveled: tuple[Candidate, int] | None = None  # the one-shot finalist ``level`` trained on, and by how much
        self.imp = importance_registry.get(importance)
        data = ctx.train_ds
        if data is None:
            raise UserInputError("the knapsack budget search needs training data (held-out images to compare "
                                 "candidates on)", "pass --data, or --search greedy")
        self.fit_ds, self.holdout_ds = split_train(data, settings.holdout_images, settings.seed)
        self.widths = list(hs.widths)
        self.floors = [min_keep(w, m, ctx.min_ratio) for w, m in zip(self.widths, hs.multiples)]
        self._scores0: list[np.ndarray] | None = None

    # -- helpers -------------------------------------------------------------------------------
    def _ctx(self, **kw) -> PruneContext:
        return replace(self.ctx, train_ds=self.fit_ds, progress=False, **kw)

    def _graph(self, model: nn.Module) -> PruneGraph:
        graph = PruneGraph(model, self.hs.example, self.hs.ignored_layers)
        got = [g.root_name for g in graph.groups]
        want = [g.root_name for g in self.hs.graph.groups]
        if got != want:
            raise RuntimeError(f"pruned network's groups {got[:3]}... differ from the original's {want[:3]}...")
        return graph

    def original_scores(self) -> list[np.ndarray]:
        if self._scores0 is None:
            self._scores0 = self.imp.scores(self.hs._graph(), self._ctx())
        return self._scores0

    def _from_counts(self, name: str, counts: list[int], scores: list[np.ndarray] | None = None, note: str = "") -> Candidate:
        graph = self.hs._graph()
        keep = keep_lists(graph, scores if scores is not None else self.original_scores(), counts)
        return Candidate(name, list(counts), keep, self.hs.predictor.predict(counts), note=note)

    # -- the iterative knapsack ----------------------------------------------------------------
    def _schedule(self, budget_ms: float, steps: int, batches: int, train_last: bool, uniform: bool = False
                  ) -> tuple[list[int], list[list[int]], nn.Module, list[dict[str, Any]]]:
        """Walk the predicted latency down to ``budget_ms`` in ``steps`` knapsack steps on the network as it
        stands, each followed by BN re-estimation and ``batches`` mini-batches of fine-tuning (the last one too
        when ``train_last``). ``uniform``: each step is the least uniform pruning that meets its aim instead of
        the knapsack (the channels kept in each group still chosen by importance on the network as it stands).
        Returns the counts, the original index of every kept channel, the pruned model with its trained
        weights, and the trace."""
        hs, s = self.hs, self.s
        model = copy.deepcopy(hs.model).eval()
        counts = list(self.widths)
        ids = [list(range(w)) for w in self.widths]
        start = hs.predictor.predict(counts)
        trace = []
        # A trained schedule cuts in its first steps and trains the final network in the rest (``settle``):
        # fine-tuning spent on channels a later step removes is lost, and on ResNet-18 at 0.35x one uniform cut
        # followed by all the training beat the same counts reached in 8 evenly spread cuts with the same training
        # (91.16 vs 90.57, bench/RESULTS.md §5, session 23).
        # Without training between steps there is nothing to settle: the cuts spread over every step.
        cuts = max(1, math.ceil(steps * (1 - s.settle))) if train_last and batches > 0 else steps
        for step in range(1, steps + 1):
            if step > cuts:  # the network is final: train it
                trace.append({**trace[-1], "step": step, "cut": False})
                self._train_step(model, batches, step)
                continue
            aim = start - (start - budget_ms) * step / cuts
            graph = self._graph(model)
            scores = self.imp.scores(graph, self._ctx(seed=self.ctx.seed + step))
            if uniform:
                even = self.uniform(aim)
                if even is None:
                    raise BudgetError(f"no uniform pruning meets {aim:.3f} ms by prediction", "raise the budget")
                new_counts, cut = [min(a, b) for a, b in zip(even, counts)], 1 - min(
                    c / w for c, w in zip(even, self.widths))
                if s.fill and step == cuts:
                    new_counts = self._fill(scores, aim, new_counts, counts)
            else:
                found = knapsack.solve(hs.predictor, self.widths, scores, aim, hs.multiples, self.floors,
                                       current=counts, normalize=self.imp.normalize, max_cut=s.max_cut)
                new_counts, cut = list(found.counts), found.trace[-1]["max_cut"]
            keep = keep_lists(graph, scores, new_counts)
            graph.apply(keep)
            ids = [[ids[g][i] for i in keep[g]] for g in range(len(ids))]
            counts = new_counts
            trace.append({"step": step, "aim_ms": aim, "predicted_ms": hs.predictor.predict(counts),
                          "max_cut": cut, "kept_share": sum(counts) / sum(self.widths), "cut": True})
            model = graph.model
            if (step < steps or train_last) and batches > 0:
                recalibrate_bn(model, self.fit_ds, self.s.bn_images, seed=self.s.seed)
                self._train_step(model, batches, step)
            model.eval()
        return counts, ids, model, trace

    def _train_step(self, model: nn.Module, batches: int, step: int) -> None:
        """A schedule step's fine-tune: ``batches`` mini-batches at the step lr (cosine within the step)."""
        from edgeprune.train import train

        s = self.s
        train(model, self.fit_ds, epochs=1.0, max_steps=batches, lr=s.step_lr, batch_size=s.batch_size,
              augment=False, progress=False, desc="search step", seed=self.ctx.seed + step)
        model.eval()

    def _fill(self, scores: list[np.ndarray], aim: float, floor: list[int], current: list[int]) -> list[int]:
        """``floor`` (a uniform cut) topped up towards ``aim`` by the knapsack: channels (at most ``current``) go
        back where they keep the most importance per predicted millisecond. On a coarse grid the least uniform cut
        that meets an aim can land far under it (ResNet-18 on OpenVINO, session 23: the 64-channel groups at 40 or at
        32, everything else equal, measured 18% apart); the fill spends that slack instead of giving it away."""
        try:
            found = knapsack.solve(self.hs.predictor, self.widths, scores, aim, self.hs.multiples, floor,
                                   current=current, normalize=self.imp.normalize, max_cut=1.0)
        except BudgetError:
            return floor
        return list(found.counts) if self.hs.predictor.predict(found.counts) <= aim + 1e-12 else floor

    def iterative(self, budget_ms: float) -> tuple[list[Candidate], list[dict[str, Any]]]:
        """The ``steps``-step schedule's channels on the original weights, then (when the schedule trained) the
        same channels with its fine-tuned weights; and the schedule's trace."""
        s = self.s
        counts, ids, model, trace = self._schedule(budget_ms, s.steps, s.step_batches, train_last=False)
        cand = Candidate(f"knapsack ({s.steps} steps)", counts, {g: ids[g] for g in range(len(ids))},
                         self.hs.predictor.predict(counts), note=f"max cut {trace[-1]['max_cut']:.1f}")
        if s.steps == 1 or s.step_batches <= 0:
            return [cand], trace
        trained = replace(cand, name=f"knapsack ({s.steps} steps, trained)", keep={}, model=model,
                          trained_images=(s.steps - 1) * s.step_batches * s.batch_size,
                          note=cand.note + f"; the weights of the schedule ({s.steps - 1} x "
                          f"{s.step_batches} mini-batches of fine-tuning between its steps)")
        return [cand, trained], trace

    def progressive(self, aim: float, uniform: bool = False) -> Candidate | None:
        """Prune while training: ``progressive_steps`` knapsack steps (latency-saliency on the network as it
        stands, so each cut goes where it buys latency), each followed by ``step_batches`` mini-batches of
        fine-tuning, the last one too; the candidate keeps those weights. None when ``progressive_steps`` is 0.

        ``uniform``: the same schedule and training with uniform steps (every group loses the same share). It is
        the uniform allocation given exactly the training the progressive knapsack gets, so arbitration compares
        the two allocations at equal training: without it a trained knapsack candidate beat untrained uniform
        ones by its training alone, while uniform pruning given the same training was as accurate
        (bench/RESULTS.md §5). None when there is no training to equalise (``step_batches`` 0). With ``fill`` its
        last cut is topped up to its aim (``_fill``): every group keeps at least the uniform count, and the slack
        a coarse grid leaves goes back where it keeps the most importance.

        Why not Gate Decorator's Tick-Tock itself: its loss-only ranking is blind to latency. On ResNet-20 at a
        0.5x aim (OpenVINO table, multiple 8) it cut every inner convolution to 8 channels while the predicted
        latency moved from 0.339 to 0.177 ms, then one tick halved the 16-channel stem group and landed at
        0.110 ms, a third under the aim."""
        s = self.s
        if s.progressive_steps <= 0 or (uniform and s.step_batches <= 0):
            return None
        try:
            counts, ids, model, trace = self._schedule(aim, s.progressive_steps, s.step_batches, train_last=True,
                                                       uniform=uniform)
        except BudgetError:  # a step painted into a corner: no candidate, the others stand
            return None
        name = f"uniform (progressive, {s.progressive_steps} steps)" if uniform else \
            f"progressive ({s.progressive_steps} steps)"
        predicted = self.hs.predictor.predict(counts)
        if s.step_batches <= 0:  # nothing trained: its channels on the original weights
            return Candidate(name, counts, {g: ids[g] for g in range(len(ids))}, predicted,
                             note=f"max cut {trace[-1]['max_cut']:.1f}; no fine-tuning between steps")
        filled = "; its last uniform cut topped up to the aim" if uniform and s.fill else ""
        return Candidate(name, counts, {}, predicted, model=model,
                         trained_images=s.progressive_images,
                         note=f"max cut {trace[-1]['max_cut']:.1f}{filled}; "
                         f"pruned while fine-tuning ({s.progressive_steps} x {s.step_batches} mini-batches), its "
                         f"trained weights")

    # -- the other candidates ------------------------------------------------------------------
    def uniform(self, budget_ms: float) -> list[int] | None:
        """The least uniform pruning (on the multiples) whose prediction meets the budget."""
        for r in np.arange(0.01, 0.96, 0.01):
            counts = uniform_counts(self.widths, float(r), min_ratio=self.ctx.min_ratio, multiples=self.hs.multiples)
            if self.hs.predictor.predict(counts) <= budget_ms:
                return counts
        return None

    def random_allocations(self, budget_ms: float, n: int, max_cut: float) -> list[list[int]]:
        rng = np.random.default_rng(self.s.seed + 7)
        out = []
        for _ in range(n):
            willing = rng.uniform(0.2, 1.0, len(self.widths))
            for t in np.arange(0.02, 3.0, 0.02):
                counts = [round_channels(w * (1 - min(max_cut, t * u)), w, m, f)
                          for w, u, m, f in zip(self.widths, willing, self.hs.multiples, self.floors)]
                if self.hs.predictor.predict(counts) <= budget_ms:
                    out.append(counts)
                    break
        return out

    def candidates(self, budget_ms: float, aims: dict[str, float] | None = None,
                   schedules: frozenset = frozenset(STEERED), seen: frozenset = frozenset()
                   ) -> tuple[list[Candidate], list[dict[str, Any]]]:
        """Every strategy's candidate within ``budget_ms`` by prediction; the three schedules (``STEERED``: the
        iterative knapsack, the progressive knapsack, the progressive uniform) aim at ``aims[kind]`` instead
        (at most the budget), when given. ``schedules``: which of them run; the progressive uniform one ends on
        the least uniform counts within its aim, so it is not trained again when ``seen`` (keys) holds those."""
        s = self.s
        aims = aims or {}

        def aim_of(kind: str) -> float:
            return min(budget_ms, aims.get(kind, budget_ms))

        cands, trace = [], []
        aim = aim_of("knapsack")  # the iterative and one-shot knapsacks'
        if "knapsack" in schedules:
            try:
                cands, trace = self.iterative(aim)
            except BudgetError:
                if aim >= budget_ms:
                    raise
                aim = budget_ms  # the aim is out of the knapsack's reach: aim at the budget itself
                cands, trace = self.iterative(aim)
        if "progressive" in schedules:
            grown = self.progressive(aim_of("progressive"))
            if grown is None and aim_of("progressive") < budget_ms:
                grown = self.progressive(budget_ms)
            if grown is not None:
                cands.append(grown)
        cut = max([s.max_cut] + [t["max_cut"] for t in trace])
        scores0 = self.original_scores()
        if s.steps > 1:
            try:
                one = knapsack.solve(self.hs.predictor, self.widths, scores0, aim, self.hs.multiples, self.floors,
                                     normalize=self.imp.normalize, max_cut=s.max_cut)
                cands.append(self._from_counts("knapsack (one shot)", one.counts))
            except BudgetError:
                pass
        try:
            greedy = search_counts(self.hs.predictor, self.widths, scores0, budget_ms, self.hs.multiples,
                                   self.floors, normalize=self.imp.normalize)
            cands.append(self._from_counts("greedy", greedy.counts))
        except BudgetError:
            pass
        uni = self.uniform(budget_ms)
        even_aim = aim_of("uniform")
        uni_aimed = uni if even_aim >= budget_ms else self.uniform(even_aim)
        if "uniform" in schedules and uni_aimed is not None and trained_key("uniform", uni_aimed) not in seen:
            even = self.progressive(even_aim, uniform=True)
            if even is not None:
                cands.append(even)
        if uni is not None:
            cands.append(self._from_counts(f"uniform ({self.imp.name})", uni))
            if self.imp.name != "l1":
                l1 = importance_registry.get("l1").scores(self.hs._graph(), self._ctx())
                cands.append(self._from_counts("uniform (l1)", uni, l1))
        for i, counts in enumerate(self.random_allocations(budget_ms, s.random_candidates, cut)):
            cands.append(self._from_counts(f"random {i + 1}", counts))
        unique, seen = [], set()
        for c in cands:
            if c.key not in seen:
                seen.add(c.key)
                unique.append(c)
        return unique, trace

    def subnet(self, cand: Candidate) -> nn.Module:
        if cand.model is not None:
            return copy.deepcopy(cand.model).eval()
        graph = self.hs._graph()
        graph.apply(cand.keep)
        return graph.model

    def finalists(self, scored: list[Candidate]) -> list[Candidate]:
        """Which scored candidates get the short fine-tune: the best of each kind (``Candidate.kind``: knapsack,
        greedy, uniform and random on the original weights; the knapsack schedule's, the progressive and the
        progressive uniform candidates with the weights the search trained) by the BN-re-estimated score, then the
        next best, ``finalists`` in all. Kinds first because right after a deep cut that score sits near chance and
        ranks poorly on its own; one-shot and trained kinds apart because the trained ones score higher there for
        their training alone (on ResNet-18 at 96 px, 0.35x on OpenVINO, uniform pruning on the original weights
        scored 75% against the progressive uniform's 90.5%, and was never probed, while given the same training it
        was the better model, bench/RESULTS.md §5)."""
        order = sorted(scored, key=lambda c: (-c.holdout_top1, c.predicted_ms))
        firsts = [c for i, c in enumerate(order) if all(o.kind != c.kind for o in order[:i])]
        return (firsts + [c for c in order if c not in firsts])[:self.s.finalists]

    def probe(self, model: nn.Module) -> tuple[float, nn.Module, int]:
        """(held-out top-1, the trained copy, training images it saw) after ``finalist_batches`` mini-batches of
        fine-tuning a copy of ``model`` (every finalist sees the same batches in the same order)."""
        from edgeprune.train import train

        trial = copy.deepcopy(model)
        history = train(trial, self.fit_ds, epochs=1.0, max_steps=self.s.finalist_batches, lr=self.s.step_lr,
                        batch_size=self.s.batch_size, augment=False, progress=False, desc="finalist",
                        seed=self.s.seed)
        return _evaluate(trial.eval(), self.holdout_ds), trial, int(history["steps"]) * self.s.batch_size

    def _train_to(self, model: nn.Module, goal: int, had: int, desc: str) -> int:
        """Fine-tune ``model`` in place (the schedules' step lr and batch size) from ``had`` training images to at
        least ``goal``, when ``top_up`` is on; the mini-batches it trained (0: none)."""
        from edgeprune.train import train

        s = self.s
        batches = -(-(goal - had) // s.batch_size) if s.top_up and s.batch_size > 0 else 0
        if batches > 0:
            train(model, self.fit_ds, epochs=1.0, max_steps=batches, lr=s.step_lr, batch_size=s.batch_size,
                  augment=False, progress=self.ctx.progress, desc=desc, seed=s.seed + 1)
        return max(batches, 0)

    def level(self, pool: list[Candidate], trials: dict[str, tuple[nn.Module, int]]) -> None:
        """Give the best one-shot finalist (by its probe) the training the trained finalists had, before the choice,
        when ``top_up`` is on: fine-tune its probe's weights until it has seen ``training_images(finalists=True)``
        images, and score it again (``probe_top1`` becomes that score; ``trials`` holds the longer-trained copy).

        Without it the probes compare a one-shot candidate after 40 mini-batches with progressive ones after 280, so
        the choice rewards training, not allocation: on ResNet-18 at 96 px (OpenVINO, 0.35x) the progressive knapsack
        won at 91.4% on the proxy and reached 91.27% after the common fine-tune, while uniform pruning on the
        original weights given the same training reached 91.64% (bench/RESULTS.md §5). Nothing happens when no
        trained candidate is a finalist (the one-shot ones are then compared at equal training already)."""
        one_shot = [c for c in pool if c.model is None]
        if not one_shot or len(one_shot) == len(pool):
            return
        lead = max(one_shot, key=lambda c: (c.probe_top1, -c.predicted_ms))
        trial, seen = trials[lead.name]
        batches = self._train_to(trial, self.s.training_images(finalists=True), lead.trained_images + seen,
                                 "search: equal training")
        if batches <= 0:
            return
        before, lead.probe_top1 = lead.probe_top1, _evaluate(trial.eval(), self.holdout_ds)
        trials[lead.name] = (trial, seen + batches * self.s.batch_size)
        self.leveled = (lead, batches)
        lead.add_note(f"the best one-shot finalist: fine-tuned {batches} more mini-batches before the choice, to the "
                      f"trained candidates' training (held-out top-1 {100 * before:.2f}% -> "
                      f"{100 * lead.probe_top1:.2f}%)")

    def arbitrate(self, cands: list[Candidate], models: dict[str, nn.Module] | None = None
                  ) -> tuple[Candidate, nn.Module]:
        """The most accurate candidate on the held-out images (``models``: their sub-networks, by name, when
        already built; BN re-estimated in place). Each is scored after BN re-estimation; the finalists
        (``finalists``) are then fine-tuned briefly from those weights and ranked by that score instead: right
        after a deep cut the first score is near chance (at 0.4x on ResNet-20 its rank correlation with the
        accuracy after the real fine-tune was 0.41; after 40 mini-batches, 0.94), and the best one-shot finalist is
        trained on to the trained finalists' training first (``level``). A finalist that wins is
        returned with the weights of its short fine-tune (the search trained them; throwing them away would
        hand the build a less trained model for nothing), and its ``trained_images`` count them; without
        finalists, with its BN-re-estimated weights."""
        built = {}
        self.leveled = None
        for cand in tqdm(cands, desc="candidates", disable=not self.ctx.progress, file=sys.stderr, leave=False):
            model = models[cand.name] if models is not None else self.subnet(cand)
            built[cand.name] = recalibrate_bn(model.eval(), self.fit_ds, self.s.bn_images, seed=self.s.seed)
            cand.holdout_top1 = _evaluate(built[cand.name], self.holdout_ds)
        pool = self.finalists(cands) if self.s.finalist_batches > 0 and len(cands) > 1 else []
        trials: dict[str, tuple[nn.Module, int]] = {}
        for cand in tqdm(pool, desc="finalists", disable=not self.ctx.progress, file=sys.stderr, leave=False):
            cand.probe_top1, trial, seen = self.probe(built[cand.name])
            trials[cand.name] = (trial, seen)
        self.level(pool, trials)
        if not pool:
            best = max(cands, key=lambda c: (c.holdout_top1, -c.predicted_ms))
            return best, built[best.name]
        best = max(pool, key=lambda c: (c.probe_top1, -c.predicted_ms))
        trained, seen = trials[best.name]
        best.trained_images += seen
        best.add_note(f"returned with the weights of its finalist fine-tune ({seen // self.s.batch_size} mini-batches)")
        return best, trained

    def top_up(self, winner: Candidate, model: nn.Module) -> None:
        """Fine-tune ``model`` (the winner's, in place) until it has seen as many training images inside the
        search as the most trained candidates did (``SearchSettings.training_images``; the finalists' fine-tune
        counts when the winner was one of them), when ``top_up`` is on.

        Without it, which kind of candidate wins decides how much the search trained it: a progressive winner has
        the schedule's 8 x 30 mini-batches and the finalists' 40, a one-shot winner (greedy, random, a knapsack on
        the original weights) the finalists' 40 alone. The build then fine-tunes either for the same epochs, so a
        one-shot winner reached the user less trained than a progressive one for no reason of its own: on ResNet-18
        at 96 px (OpenVINO, 0.35x) two one-shot winners given the difference scored 0.30 and 0.60 points higher
        (bench/RESULTS.md §5, the ``search+`` rows). The difference is the same step lr and mini-batches as the
        schedules', counted in ``trained_images`` and said in the report."""
        batches = self._train_to(model, self.s.training_images(finalists=winner.probe_top1 is not None),
                                 winner.trained_images, "search top-up")
        if batches <= 0:
            return
        model.eval()
        winner.trained_images += batches * self.s.batch_size
        winner.add_note(f"topped up by {batches} mini-batches of fine-tuning to the training of the most trained "
                        f"candidates")

    @staticmethod
    def schedule_kind(cand: Candidate) -> str | None:
        """Which steered schedule (``STEERED``) proposed ``cand``, or None: the iterative knapsack (its channels on
        the original weights; the trained twin has the same counts), the progressive knapsack, the progressive
        uniform."""
        if cand.name.startswith("knapsack (") and "one shot" not in cand.name and cand.model is None:
            return "knapsack"
        if cand.model is not None and cand.family in ("progressive", "uniform"):
            return cand.family
        return None

    def _close_calls(self, pool: list[Candidate], budget_ms: float) -> list[Candidate]:
        """Candidates measured once whose figure is within ``near / 2`` of the budget, on either side: the
        search's two paired rounds decide those by noise (on ResNet-18 at 96 px the same counts, a candidate and
        its trained twin, measured 1.983 and 1.962 ms in one round, either side of a 1.977-ms budget), so they
        are measured once more before arbitration."""
        band = self.s.near / 2
        return [c for c in pool if len(c.measurements) == 1 and abs(c.measured_ms / budget_ms - 1) <= band]

    def _measure(self, fresh: list[Candidate], again: list[Candidate], models: dict[str, nn.Module]) -> None:
        """Measure ``fresh`` candidates (building their sub-networks into ``models``) together with ``again``
        (measured before: their figure becomes the mean of both), and refit the predictor on every figure."""
        batch = {c.name: self.subnet(c) for c in fresh}
        models.update(batch)
        batch.update({c.name: models[c.name] for c in again})
        measured = self.hs.measure_models(batch, rounds=2)
        for c in fresh + again:
            c.measurements = c.measurements + [measured[c.name]]  # a new list: ``replace`` copies share the old one
            self.hs.samples.append((list(c.counts), measured[c.name]))
        self.hs.predictor.calibrate(self.hs.samples)

    def _measured_candidates(self, budget_ms: float) -> tuple[list[Candidate], list[dict[str, Any]], dict[str, nn.Module]]:
        """The candidates, each measured on the target (``hs.measure_models``: paired against the unpruned model).

        The optimiser finds the predictor's errors, so every measurement also refits the predictor. Each of the
        three schedules (the iterative knapsack, the progressive knapsack, the progressive uniform) is steered by
        its own measurements (``steer``): while its closest candidate misses the budget, or sits more than
        ``near`` under it, another round (up to ``refits``) reruns it at a new aim; the one-shot candidates
        (greedy, uniform, random) are regenerated with the refitted predictor in every round, and alone call a
        round when more than half of them miss. Without its own aim, a uniform schedule that lands a hair over
        the budget would be dropped and the knapsack would win arbitration by default, not by its allocation;
        without aiming back up, a round after a miss can land far under the budget and give accuracy away for
        latency the budget allowed. The candidates of every round are pooled; one whose figure lands within
        ``near / 2`` of the budget (either side) is measured once more, with the next round or at the end, and
        judged on the mean of both (``_close_calls``)."""
        pool: list[Candidate] = []
        models: dict[str, nn.Module] = {}
        seen: set = set()
        trace: list[dict[str, Any]] = []
        aims = {kind: budget_ms for kind in STEERED}
        points: dict[str, list[Candidate]] = {kind: [] for kind in STEERED}
        active = set(STEERED)
        for rnd in range(1 + max(0, self.s.refits)):
            cands, steps = self.candidates(budget_ms, aims=aims, schedules=frozenset(active), seen=frozenset(seen))
            trace = trace or steps
            fresh = []
            for c in cands:
                if c.key in seen:
                    continue
                seen.add(c.key)
                if rnd:
                    c.name = f"{c.name} (refit {rnd})"
                    c.add_note("after refitting the predictor on the measurements")
                fresh.append(c)
            if not fresh:
                break
            self._measure(fresh, self._close_calls(pool, budget_ms), models)
            pool += fresh
            ran = {self.schedule_kind(c): c for c in fresh}
            for kind in list(active):
                if kind not in ran:  # nothing new from it (painted into a corner, or the same counts again)
                    active.discard(kind)
                    continue
                points[kind].append(ran[kind])
                aim = steer([(c.counts, c.measured_ms) for c in points[kind]], budget_ms, self.s.near,
                            self.hs.predictor.predict)
                if aim is None:
                    active.discard(kind)
                else:
                    aims[kind] = aim
            others = [c for c in fresh if self.schedule_kind(c) is None]
            if not active and sum(c.measured_ms <= budget_ms for c in others) * 2 >= len(others):
                break
        last = self._close_calls(pool, budget_ms)
        if last:
            self._measure([], last, models)
        return pool, trace, models

    def run(self, budget_ms: float) -> tuple[PruneResult, SearchResult]:
        fastest = self.hs.predictor.predict(
            [knapsack.options_for(w, m, f, w, 1.0)[0] for w, m, f in zip(self.widths, self.hs.multiples, self.floors)])
        if fastest > budget_ms:
            raise BudgetError(f"latency budget {budget_ms:.3f} ms cannot be met: the fastest model this search "
                              f"reaches is predicted at {fastest:.3f} ms",
                              "raise the budget, keep fewer layers whole (--keep), or lower the minimum width "
                              "(--min-width SHARE)")
        with torch.random.fork_rng():
            cands, trace, models = self._measured_candidates(budget_ms)
            fits = [c for c in cands if c.measured_ms <= budget_ms]
            winner, model = self.arbitrate(fits or cands, models)
            self.top_up(winner, model)
            for c in cands:
                if c not in fits and fits:
                    c.add_note("over the budget by measurement: not compared")
        rows = [c.row(self.widths) for c in cands]
        compared = [c for c in cands if c.holdout_top1 is not None]
        probed = [c for c in cands if c.probe_top1 is not None]
        scope = f"{len(compared)} of {len(cands)} candidates compared " + \
            f"({'those within the budget by measurement' if len(compared) < len(cands) else 'all'})"
        if probed:
            runner_up = max((c for c in probed if c is not winner), key=lambda c: c.probe_top1, default=None)
            why = (f"{scope}; the {len(probed)} best by held-out top-1 after BN re-estimation (the best of each kind "
                   f"first) were fine-tuned for {self.s.finalist_batches} mini-batches; {winner.name} then scored "
                   f"{100 * winner.probe_top1:.2f}% on {len(self.holdout_ds)} held-out training images" +
                   (f", ahead of {runner_up.name} ({100 * runner_up.probe_top1:.2f}%)" if runner_up else ""))
            if self.leveled:
                lead, batches = self.leveled
                why += (f" (the best one-shot finalist, {lead.name}, was scored after {batches} more mini-batches, "
                        f"the trained finalists' training)")
        else:
            runner_up = max((c for c in compared if c is not winner), key=lambda c: c.holdout_top1, default=None)
            why = (f"{scope}; {winner.name} scored {100 * winner.holdout_top1:.2f}% top-1 on {len(self.holdout_ds)} "
                   f"held-out training images after BN re-estimation" +
                   (f", ahead of {runner_up.name} ({100 * runner_up.holdout_top1:.2f}%)" if runner_up else ""))
        if winner.trained_images:  # say what the search's own training adds to the build's fine-tune
            why += (f"; its weights were trained on {winner.trained_images} images inside the search "
                    f"({winner.trained_images / len(self.fit_ds):.2f} epoch of the training set) before the "
                    f"build's fine-tune")
        info(f"      search: {len(cands)} candidates within {budget_ms:.3f} ms predicted; {why}")
        ranked = knapsack.ranked_scores(self.original_scores(), self.imp.normalize)
        total = sum(float(r.sum()) for r in ranked) or 1.0
        kept = kept_importance(ranked, winner.counts)
        found = SearchResult(winner.counts, winner.predicted_ms, kept / total, len(trace), trace,
                             strategy="knapsack", candidates=rows, winner=winner.name, why=why,
                             importance=self.imp.name)
        records = [{"group": g.root_name, "before": g.channels, "after": n, "members": len(g.members)}
                   for g, n in zip(self.hs.graph.groups, winner.counts)]
        ratio = 1 - sum(winner.counts) / sum(self.widths)
        return PruneResult(model, self.imp.name, ratio, self.hs.multiple, records), found
