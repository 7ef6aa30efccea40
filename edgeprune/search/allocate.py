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
3. **Measurement, then arbitration** (EagleEye; ``search/steer.py``, then ``search/arbitrate.py``): every candidate
   is compiled and measured on the target (paired against a calibration model in alternating bursts, 2 fresh
   processes: ``measure.paired``); every measurement refits the predictor, and each of the three schedules
   (iterative knapsack, progressive knapsack, progressive uniform) is steered by its own measurements (``steer``):
   while it misses the budget, or lands more than ``near`` under it, another round reruns it at an aim taken from
   those measurements (``refits`` rounds at most; the one-shot candidates are regenerated with the refitted
   predictor in each round). Only candidates within the budget *by measurement* are compared (all of them when none
   is), because the knapsack finds exactly the allocations the predictor prices too cheaply. Each compared
   candidate's BN statistics are re-estimated on ``bn_images`` training images (``prune.bn.recalibrate_bn``) and its
   top-1 is taken on ``holdout_images`` held-out *training* images (never the test set). That score sits near chance
   after a deep cut, so the ``finalists`` best (the best of each kind first) are then fine-tuned for
   ``finalist_batches`` mini-batches from those weights and scored again; the most accurate finalist wins (ties: the
   faster prediction). The caller measures it on the target and fine-tunes it like any pruned model, from the
   weights of the winner's short fine-tune (the search trained them: a one-shot winner returned with its untrained
   weights threw away 40 mini-batches; on ResNet-18 at 96 px it scored 59.6% right after the cut and 91.2% after
   them, bench/RESULTS.md §5), counted in its ``trained_images`` like the schedules' training.

Because uniform pruning is a candidate (and, as its own kind, always a finalist when within the budget by
measurement and ``finalists`` >= 7, the number of kinds), the search loses to it only through the proxy's error (a
short fine-tune ranks sub-networks well but not perfectly), the measurement's, or the noise of fine-tuning itself
(on ResNet-18 at 96 px one network and recipe scored 91.28-91.82% over four training-data orders, bench/RESULTS.md
§5). Trained candidates have had more training than the one-shot ones, and that was most of why they won
(bench/RESULTS.md §5: given the same total training, uniform pruning matched the search on ResNet-20 at 0.5x); the
progressive uniform candidate is there so that the knapsack's allocation also meets uniform's at equal training, and
the best one-shot finalist is trained on to the trained finalists' training before the choice (``Arbiter.level``),
so that pruning while training meets pruning at once, then training, at equal training too.
Invariants: every candidate's predicted latency is within the budget; every group keeps at least
its floor and one channel; the result lists every candidate with its predicted latency, held-out
top-1 and the share of channels it keeps, and names the winner.
"""
from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeprune.errors import UserInputError
from edgeprune.prune import importance as importance_registry
from edgeprune.prune.base import PruneContext, PruneResult, keep_lists
from edgeprune.prune.bn import recalibrate_bn
from edgeprune.prune.graph import PruneGraph
from edgeprune.prune.select import min_keep, round_channels, uniform_counts
from edgeprune.search import knapsack
from edgeprune.search.arbitrate import Arbiter, split_train
from edgeprune.search.budget import BudgetError, SearchResult, kept_importance, search_counts
from edgeprune.search.candidate import Candidate, trained_key
from edgeprune.search.settings import SearchSettings
from edgeprune.search.steer import STEERED, measured_candidates
from edgeprune.ui import info


class Allocator:
    """The knapsack strategy over one ``HardwareSearch`` (its graph, predictor, multiples)."""

    def __init__(self, hs, ctx: PruneContext, importance: str, settings: SearchSettings):
        self.hs, self.ctx, self.s = hs, ctx, settings
        self.imp = importance_registry.get(importance)
        data = ctx.train_ds
        if data is None:
            raise UserInputError("the knapsack budget search needs training data (held-out images to compare "
                                 "candidates on)", "pass --data, or --search greedy")
        self.fit_ds, holdout_ds = split_train(data, settings.holdout_images, settings.seed)
        self.arbiter = Arbiter(settings, self.fit_ds, holdout_ds, ctx.progress)
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

    def run(self, budget_ms: float) -> tuple[PruneResult, SearchResult]:
        fastest = self.hs.predictor.predict(
            [knapsack.options_for(w, m, f, w, 1.0)[0] for w, m, f in zip(self.widths, self.hs.multiples, self.floors)])
        if fastest > budget_ms:
            raise BudgetError(f"latency budget {budget_ms:.3f} ms cannot be met: the fastest model this search "
                              f"reaches is predicted at {fastest:.3f} ms",
                              "raise the budget, keep fewer layers whole (--keep), or lower the minimum width "
                              "(--min-width SHARE)")
        with torch.random.fork_rng():
            cands, trace, models = measured_candidates(self, budget_ms)
            fits = [c for c in cands if c.measured_ms <= budget_ms]
            winner, model = self.arbiter.choose(fits or cands, models)
            self.arbiter.top_up(winner, model)
            for c in cands:
                if c not in fits and fits:
                    c.add_note("over the budget by measurement: not compared")
        why = self.arbiter.why(cands, winner)
        info(f"      search: {len(cands)} candidates within {budget_ms:.3f} ms predicted; {why}")
        ranked = knapsack.ranked_scores(self.original_scores(), self.imp.normalize)
        total = sum(float(r.sum()) for r in ranked) or 1.0
        kept = kept_importance(ranked, winner.counts)
        found = SearchResult(winner.counts, winner.predicted_ms, kept / total, len(trace), trace,
                             strategy="knapsack", candidates=[c.row(self.widths) for c in cands], winner=winner.name,
                             why=why, importance=self.imp.name)
        records = [{"group": g.root_name, "before": g.channels, "after": n, "members": len(g.members)}
                   for g, n in zip(self.hs.graph.groups, winner.counts)]
        ratio = 1 - sum(winner.counts) / sum(self.widths)
        return PruneResult(model, self.imp.name, ratio, self.hs.multiple, records), found
