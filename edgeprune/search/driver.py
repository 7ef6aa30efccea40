"""The ``--budget-ms`` loop: search by prediction, check by measurement, tighten, retry.

The search and its latency table use ``pctx.round_to`` (the build's channel multiple: ``--round-to``
or the profile's multiple for the precision) and keep ``pctx.ignored_layers`` whole.

After a miss the aim is tightened and the search runs again; a retry that then lands more than
``SearchSettings.near`` under the budget gives away latency the budget allows (session 29, ResNet-18 at 96 px on
ncnn, 0.5x: a first model measured 7% over, the retry landed 16% under), so while attempts remain one more
search aims back up between the two (``steer.steer``: the secant through the closest measured model on each
side, priced by the refitted predictor). Of the attempts within the budget the one measured slowest is returned
(the most channels the budget allows); one that misses is never returned.

Invariant: ``prune_to_budget`` returns a model whose latency *measured* on the target (in a
fresh process, before fine-tuning, which does not change latency) is within the budget, or
raises ``GateFailed`` with every attempt's predicted and measured figures (also when a miss tightened the aim
beyond reach: that is the measurements' doing, not the input's). A budget the
search cannot reach even by prediction raises ``BudgetError`` (bad input, exit 2).
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeprune.errors import GateFailed, UserInputError
from edgeprune.measure.protocol import MeasureSettings
from edgeprune.prune.base import PruneContext, PruneResult, check_context
from edgeprune.search.budget import BudgetError
from edgeprune.search.settings import SearchSettings
from edgeprune.search.steer import steer
from edgeprune.search.hardware import HardwareSearch
from edgeprune.ui import info


def parse_budget(text: str) -> tuple[float, bool]:
    """'8' / '8ms' -> (8.0, False); '0.5x' -> (0.5, True) meaning a fraction of the baseline."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|x)?\s*", str(text))
    if not m or float(m.group(1)) <= 0:
        raise UserInputError(f"cannot read latency budget {text!r}", "use milliseconds like 8 or 8ms, or a share like 0.5x")
    value, relative = float(m.group(1)), m.group(2) == "x"
    if relative and value >= 1:
        raise UserInputError(f"relative budget {text} is not below the baseline", "use e.g. 0.5x")
    return value, relative


def _check_reach(hs: HardwareSearch, pctx: PruneContext, method: str, budget_ms: float, settings: SearchSettings,
                 exc: BudgetError):
    """The prediction says the budget is out of reach: measure the fastest model the search may return. If it
    does meet the budget, the predictor learns that point and the search runs again; otherwise the budget
    really is out of reach (bad input), and the error says what was measured."""
    counts = hs.fastest_counts(pctx.min_ratio)
    measured = hs.measure_model(hs.prune_counts(counts))
    info(f"      the prediction says {budget_ms:.3f} ms is out of reach; the fastest model the search may return "
         f"measured {measured:.3f} ms")
    if measured > budget_ms:
        raise BudgetError(f"latency budget {budget_ms:.3f} ms cannot be met: the fastest model this search may "
                          f"return (every layer at its minimum width) measured {measured:.3f} ms",
                          "raise the budget, keep fewer layers whole (--keep), or lower the minimum width "
                          "(--min-width SHARE)") from exc
    hs.add_measurement(counts, measured)
    try:
        return hs.search(pctx, method, budget_ms, settings)
    except BudgetError as again:
        raise GateFailed(f"latency budget {budget_ms:.3f} ms: the fastest model the search may return measured "
                         f"{measured:.3f} ms, within it, but the predictor still puts every candidate over it",
                         "rerun on a quieter machine, or raise the budget slightly") from again


def _search(hs: HardwareSearch, pctx: PruneContext, method: str, target_ms: float, budget_ms: float,
            tries: list[dict[str, Any]], settings: SearchSettings):
    """One search; after a measured miss an unreachable tightened aim is the measurements' doing, not the input's."""
    try:
        return hs.search(pctx, method, target_ms, settings)
    except BudgetError as exc:
        if not tries:
            return _check_reach(hs, pctx, method, target_ms, settings, exc)
        figures = "; ".join(f"attempt {t['attempt']} predicted {t['predicted_ms']:.3f} / measured "
                            f"{t['measured_ms']:.3f} ms" for t in tries)
        raise GateFailed(f"budget {budget_ms:.3f} ms not met: the measurements disagreed with the predictions "
                         f"({figures}), and the tightened aim {target_ms:.3f} ms is out of the search's reach",
                         "rerun on a quieter machine (the spread between measurements says how noisy it is), "
                         "or raise the budget") from exc


def _aim_back_up(hs: HardwareSearch, tries: list[dict[str, Any]], budget_ms: float, near: float) -> float | None:
    """The next search's aim (ms of the predictor) when the latest attempt, within the budget, came after a miss
    and landed more than ``near`` under the budget; else None (the attempt stands). The attempt's measurement
    joins the predictor's first, so both ends of the secant are priced by the same refitted line."""
    last = tries[-1]
    if near <= 0 or all(t["measured_ms"] <= budget_ms for t in tries) or last["measured_ms"] >= budget_ms * (1 - near):
        return None
    hs.add_measurement(last["counts"], last["measured_ms"])
    aim = steer([(t["counts"], t["measured_ms"]) for t in tries], budget_ms, near, hs.predictor.predict)
    if aim is None or aim <= hs.predictor.predict(last["counts"]):
        return None  # the line leaves no room above the model that landed under the budget
    return min(aim, budget_ms)


def prune_to_budget(model: nn.Module, example: torch.Tensor, profile: dict[str, Any], budget: str,
                    method: str, pctx: PruneContext, threads: int, calib: np.ndarray | None,
                    attempts: int = 3, progress: bool = True,
                    search: SearchSettings | None = None,
                    state: dict[str, Any] | None = None, device: Any = None) -> tuple[PruneResult, dict[str, Any]]:
    """``search``: the strategy and its knobs (default: the greedy search, as before the knapsack existed).

    ``device``: a connected ``RemoteDevice`` — the table is measured and every model measured on it.

    ``state``: a dict kept between calls on the same model and target (the accuracy-bar search): its
    latency table, predictor and measurements are reused instead of built and measured again.
    """
    search = search or SearchSettings(strategy="greedy", seed=pctx.seed)
    search.check()
    value, relative = parse_budget(budget)
    check_context(pctx)
    settings = MeasureSettings(threads=threads, warmup_s=0.5, min_seconds=1.0)
    state = {} if state is None else state
    if "hs" in state:
        hs, fit = state["hs"], state["hs"].predictor.fit
    else:
        hs = HardwareSearch(model, example, profile, profile["precision"], threads, settings, calib, progress,
                            multiple=pctx.round_to, ignored_layers=pctx.ignored_layers, device=device,
                            channel_block=search.channel_block)
        if hs.block is not None and hs.block.block > hs.multiple:
            info(f"      runtime's channel block {hs.block.block} (grid {hs.multiple}): {hs.block.summary()}; "
                 f"{len(hs.block_report()['groups_on_block'])} of {len(hs.widths)} groups keep multiples of it "
                 "(--round-to N keeps the grid)")
        fit = hs.calibrate(mixed=search.calibration_mixed)
        state["hs"] = hs
    budget_ms = value * hs.baseline_ms if relative else value
    hs.near_ms = budget_ms  # candidates are measured against the calibration model nearest the budget
    info(f"      baseline measured {hs.baseline_ms:.3f} ms; budget {budget_ms:.3f} ms; "
         f"predictor fit on {fit['samples']} models (scale {fit['scale']:.2f}, offset {fit['offset_ms']:+.3f} ms"
         + (f", {fit['weight_ms_per_million']:.3f} ms per million weights"
            + (f" beyond {fit['weight_floor_m']:g} M" if fit.get("weight_floor_m") else "") if fit.get("weight_ms_per_million") else "")
         + ")")
    if budget_ms >= hs.baseline_ms:
        raise UserInputError(f"budget {budget_ms:.3f} ms is not below the baseline's measured {hs.baseline_ms:.3f} ms",
                             "the unpruned model already meets it: no pruning needed")
    tries = []
    target_ms = budget_ms  # what the search aims at by prediction; tightened after each miss
    best: tuple[float, int, PruneResult, Any] | None = None  # the slowest attempt within the budget: (ms, n, ...)
    for attempt in range(1, attempts + 1):
        result, found = _search(hs, pctx, method, target_ms, budget_ms, tries, search)
        measured = hs.measure_model(result.model)
        tries.append({"attempt": attempt, "search_target_ms": target_ms, "predicted_ms": found.predicted_ms,
                      "measured_ms": measured, "counts": found.counts,
                      "retained_importance": found.retained_importance, "winner": found.winner})
        info(f"      attempt {attempt}: aimed at {target_ms:.3f} ms, predicted {found.predicted_ms:.3f} ms, "
             f"measured {measured:.3f} ms")
        if measured <= budget_ms:
            if best is None or measured > best[0]:
                best = (measured, attempt, result, found)
            aim = _aim_back_up(hs, tries, budget_ms, search.near) if attempt < attempts else None
            if aim is None:
                break
            info(f"      attempt {attempt} measured {100 * (1 - measured / budget_ms):.0f}% under the budget after "
                 f"a miss: one more search aims back up, at {aim:.3f} ms")
            target_ms = aim
            continue
        # The predictor learns from its miss (refit with the missed model); the next search aims lower only by
        # what the refit line still under-predicts that model by, plus a small margin per attempt. (Scaling the
        # aim by the whole miss as well would count the miss twice.)
        hs.add_measurement(found.counts, measured)
        if best is not None:  # a miss while aiming back up: the earlier attempt within the budget stands
            break
        still = min(1.0, hs.predictor.predict(found.counts) / measured)
        target_ms = min(target_ms, budget_ms * still * (1 - 0.02 * attempt))
    if best is None:
        raise GateFailed(f"budget {budget_ms:.3f} ms not met after {attempts} attempts: "
                         + "; ".join(f"predicted {t['predicted_ms']:.3f} / measured {t['measured_ms']:.3f} ms" for t in tries),
                         "raise the budget or allow more attempts (--budget-attempts)")
    measured, chosen, result, found = best
    report = {"budget_ms": budget_ms, "budget_arg": budget, "baseline_measured_ms": hs.baseline_ms,
              "strategy": search.strategy, "importance": found.importance, "winner": found.winner, "why": found.why,
              "candidates": found.candidates, "schedule": found.trace if search.strategy == "knapsack" else [],
              "attempts": tries, "chosen_attempt": chosen, "measured_ms": measured,
              "predictor": hs.predictor.fit, "calibration": hs.calibration,
              "table": hs.table["meta"],
              "groups": [{"group": g.root_name, "width": w, "kept": c}
                         for g, w, c in zip(hs.graph.groups, hs.widths, found.counts)],
              "staircase": staircase(hs), "channel_block": hs.block_report()}
    return result, report


def staircase(hs: HardwareSearch, top: int = 3) -> list[dict[str, Any]]:
    """Measured latency vs out-channels (at full in-channels) of the ``top`` slowest layer signatures."""
    ms = hs.predictor.layer_ms(hs.widths)
    slowest: dict[str, float] = {}
    for layer, t in zip(hs.plan, ms):
        slowest[layer.sig.key()] = slowest.get(layer.sig.key(), 0.0) + t
    out = []
    for key in sorted(slowest, key=slowest.get, reverse=True)[:top]:
        row = hs.table["rows"][key]
        if row.sig.kind == "depthwise":
            out.append({"layer": key, "channels": row.ins, "ms": [r[0] for r in row.ms]})
        else:
            out.append({"layer": key, "channels": row.outs, "ms": row.ms[-1], "in_channels": row.ins[-1]})
    return out
