"""Whole-model latency from the lookup table: sum of layer latencies, corrected by a fitted line.

predicted(counts) = scale * sum_L table[L.sig](in_c(L), out_c(L)) + weight_ms * weights(counts) + offset_ms

L runs over the plan's entries: layers, and fused units where the runtime fuses a chain of
layers (``search.units``: the unit's row replaces its layers'). Table figures are net of each
micro-model's own input/output cost (``measure.lut_rows``), so the sum is close to the model's
compute; it still misses what micro-benchmarks cannot see (pooling, additions outside units,
memory traffic between units, the runtime's per-inference overhead); ``calibrate`` fits ``scale`` and ``offset_ms`` by least squares on whole-model
measurements (at least the unpruned model; more variants give a better line).
The *weight term* (``weight_ms`` per million weights of the allocation, counted on the unfused layers
``weight_layers``) prices what a micro-benchmark cannot see by construction: it times one layer again and
again, so that layer's weights stay in the cache, while a whole model whose weights outgrow the cache streams
them from memory on every inference. On ResNet-18 at 96 px on OpenVINO (45 MB of fp32 weights, a 32-MB L3) the
table sum under-priced the allocations that keep the wide late layers (3x3 maps: a few MACs per weight) by
7-23%; fitted on the same 12 calibration models, the term took the search candidates within ±10% from 57% to
92% (63 of session 25's, median error 9.0% -> 4.0%, bias -8.8% -> -1.5%), and 30 random variants measured side
by side in session 26 from 53% to 60% (median 9.2% -> 6.1%), at 0.17-0.19 ms per million weights on two
machines (bench/RESULTS.md §4). It is fitted only where it predicts held-out models better (leave-one-out, as
the correction below) and comes out positive. The term charges only the weights beyond a *cache floor*
(``weight_floor_m``): a model whose weights fit in the last-level cache keeps them there from one inference to
the next, so a deep cut stops paying for weights altogether (a cliff, not a line). The floor is not read from the
CPU (the runtime's own buffers and the activations share that cache, and a board's cache is not this host's):
the whole fit is redone at each candidate floor (``WEIGHT_FLOORS_M``) and the one with the lowest leave-one-out
error is kept, "no floor" on ties. Refitted on stored measurements, OpenVINO ResNet-18 at 96 px: 80% -> 97%, 77%
-> 90% and 80% -> 77% of 30 random variants within ±10% in three runs (floors of 2-4 M weights chosen), every
other stored run unchanged or within one variant (session 31).
Once enough models are measured (``RESIDUAL_MIN_SAMPLES``: the calibration plus a search's candidates), a
*measured correction* is added: the line is refitted together with one of two feature sets (``CORRECTIONS``),
whose coefficients are ridge-penalised, so what the table misprices on this runtime is priced by what was
measured:
- ``resolutions``: the table's sum split by the layers' input resolution; the fit gives each resolution its own
  scale, shrunk towards the common one. A micro-model of a layer at 96x96 and one at 3x3 are off from their
  in-model cost by different factors (large maps stream activations, small maps are weight- and
  overhead-bound), which one common scale cannot follow. Refitted on the same measurements (bench/RESULTS.md
  §4), it took ResNet-18 at 96 px on OpenVINO from 70% to 80% of 30 random variants within ±10%.
- ``cuts``: each group's cut share (1 - count/width): a layout that suits some widths and not others.
Each kind's strength is chosen by leave-one-out error (every fit redone without each model), with and without
the weight term whatever the line alone chose (on ResNet-18 at 96 px on ncnn the line rejects the term, yet a
correction needs it beside its own features: refitted on the same measurements, 60% -> 77% of 30 random variants
within ±10%, session 30); the kind with the lower error is used only where it beats the line's own, so "no
correction" is always one of the choices.
Invariant: with no calibration the prediction is the plain sum (scale 1, offset 0).
Imports without torch: layers are any objects with ``.sig`` and ``.channels(counts)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Sequence

import numpy as np

from edgeprune.measure.lut import SigTable


@dataclass
class Predictor:
    rows: dict[str, SigTable]
    layers: Sequence[Any]
    scale: float = 1.0
    offset_ms: float = 0.0
    fit: dict[str, Any] = field(default_factory=dict)
    residual: np.ndarray | None = None   # the measured correction's weights, one per feature (None: not used)
    correction: str | None = None        # which features (``CORRECTIONS``) the correction weighs
    widths: np.ndarray | None = None     # per-group widths (``cuts``)
    weight_layers: Sequence[Any] | None = None  # the unfused layers whose weights the weight term counts
    weight_ms: float = 0.0                  # ms per million weights (0: no weight term)
    weight_floor_m: float = 0.0             # millions of weights the runtime keeps cached: only those beyond pay

    def layer_ms(self, counts: Sequence[int]) -> list[float]:
        out = []
        for layer in self.layers:
            cin, cout = layer.channels(list(counts))
            out.append(self.rows[layer.sig.key()].lookup(cin, cout))
        return out

    def raw_ms(self, counts: Sequence[int]) -> float:
        return float(sum(self.layer_ms(counts)))

    def weights_m(self, counts: Sequence[int]) -> float:
        """Millions of weights of the allocation (0 without ``weight_layers``): per layer in x out x kernel area,
        out x kernel area for a depthwise one."""
        total = 0
        for layer in self.weight_layers or ():
            cin, cout = layer.channels(list(counts))
            area = int(np.prod(layer.sig.kernel))
            total += cout * area if layer.sig.kind == "depthwise" else cin * cout * area
        return total / 1e6

    def streamed_m(self, counts: Sequence[int]) -> float:
        """Millions of weights the weight term charges: those beyond ``weight_floor_m`` (see ``calibrate``)."""
        return max(0.0, self.weights_m(counts) - self.weight_floor_m)

    def predict(self, counts: Sequence[int]) -> float:
        ms = self.layer_ms(counts)
        base = self.scale * float(sum(ms)) + self.offset_ms
        if self.weight_ms:
            base += self.weight_ms * self.streamed_m(counts)
        if self.residual is None:
            return base
        return base + float(np.dot(self._features(self.correction, counts, ms), self.residual))

    def resolutions(self) -> list[tuple[int, int]]:
        """The plan's input resolutions, largest first (the ``resolutions`` correction's features)."""
        return sorted({tuple(layer.sig.in_hw) for layer in self.layers}, key=lambda hw: (-hw[0] * hw[1], hw))

    @cached_property
    def _resolution_slots(self) -> tuple[np.ndarray, int]:
        """Each layer's index in ``resolutions()``, and their number (``predict`` runs in the search's loops)."""
        index = {hw: i for i, hw in enumerate(self.resolutions())}
        return np.array([index[tuple(layer.sig.in_hw)] for layer in self.layers], dtype=np.intp), len(index)

    def _features(self, kind: str | None, counts: Sequence[int], ms: Sequence[float] | None = None) -> np.ndarray:
        if kind == "cuts":
            return 1.0 - np.asarray(counts, dtype=np.float64) / self.widths
        if kind == "resolutions":
            slots, n = self._resolution_slots
            return np.bincount(slots, weights=self.layer_ms(counts) if ms is None else ms, minlength=n)
        raise ValueError(f"unknown correction {kind!r}")

    @staticmethod
    def _base(raw: np.ndarray, wts: np.ndarray | None) -> np.ndarray:
        """The line's columns: the table's sum, the weights (when given), the offset."""
        return np.column_stack([raw] + ([wts] if wts is not None else []) + [np.ones_like(raw)])

    def calibrate(self, samples: Sequence[tuple[Sequence[int], float]]) -> dict[str, Any]:
        """Fit scale/offset to (counts, measured ms) pairs (one pair fits the offset only), then the measured
        correction when there are enough pairs (see the module docstring). With the weight term in play, the whole
        fit is done once per cache floor (``WEIGHT_FLOORS_M``, below the largest sample's weights) and the floor
        with the lowest leave-one-out error is kept; "no floor" wins ties."""
        floors = [0.0]
        if self.weight_layers and len(samples) >= WEIGHT_MIN_SAMPLES:
            most = max(self.weights_m(c) for c, _ in samples)
            floors += [f for f in WEIGHT_FLOORS_M if 0 < f < most]
        if len(floors) == 1:
            return self._fit(samples, 0.0)[0]
        errors = {f: self._fit(samples, f)[1] for f in floors}
        score = lambda f: float("inf") if errors[f] is None else errors[f]
        best = min(floors, key=lambda f: (score(f), f))  # ties keep the lowest floor
        if score(best) >= score(0.0) - 1e-12:
            best = 0.0
        fit = self._fit(samples, best)[0]
        fit["weight_floors_tried"] = {f"{f:g}": e for f, e in errors.items()}
        return fit

    def _fit(self, samples: Sequence[tuple[Sequence[int], float]], floor_m: float
             ) -> tuple[dict[str, Any], float | None]:
        """One fit with the weight term charging weights beyond ``floor_m`` million: the fit record and its
        leave-one-out mean relative error (of the correction when one is chosen, else of the line; None when the
        line has too few samples for one)."""
        self.weight_floor_m = floor_m
        raw = np.array([self.raw_ms(c) for c, _ in samples])
        meas = np.array([m for _, m in samples])
        self.weight_ms, line_loo = 0.0, None
        line = wts = None
        if len(samples) == 1 or np.ptp(raw) < 1e-9:
            self.scale, self.offset_ms = 1.0, float(np.mean(meas - raw))
        else:
            a, b = np.polyfit(raw, meas, 1)
            self.scale, self.offset_ms = float(a), float(b)
            if self.weight_layers and len(samples) >= WEIGHT_MIN_SAMPLES:
                wts = np.array([self.streamed_m(c) for c, _ in samples])
                if np.ptp(wts) < 1e-12:
                    wts = None  # every model carries the same weights: the term is the offset's
            if wts is not None:
                line_loo = _loo_error(self._base(raw, None), meas)
                x = self._base(raw, wts)
                (a2, w2, b2), *_ = np.linalg.lstsq(x, meas, rcond=None)
                with_weights = _loo_error(x, meas)
                if a2 > 0 and w2 > 0 and with_weights < line_loo - 1e-12:
                    self.scale, self.weight_ms, self.offset_ms = float(a2), float(w2), float(b2)
                    line_loo, line = with_weights, x @ np.array([a2, w2, b2])
        if line is None:
            line = self.scale * raw + self.offset_ms
        self.residual, self.correction, alpha = None, None, None
        loo = None
        tried: dict[str, float] = {}
        pred = line
        if len(samples) >= RESIDUAL_MIN_SAMPLES:
            self.widths = np.max(np.array([list(c) for c, _ in samples], dtype=np.float64), axis=0)
            # each kind: the line refitted with the kind's features, ridge-penalised; true leave-one-out (every fit
            # redone without each model) against the line's own. Each kind is tried with and without the weight
            # term whatever the line chose: a term the line alone cannot use may be what the kind needs beside it
            # (ResNet-18 at 96 px on ncnn and MNN, session 30: the line through the sum rejects it or gains little,
            # while the resolution scales need it to price the wide layers' weights apart from their maps)
            loo = line_loo if line_loo is not None else _loo_error(self._base(raw, None), meas)  # no weights: no term
            line_weighted = self.weight_ms > 0
            bases = [line_weighted] + ([not line_weighted] if wts is not None else [])
            best = None
            for kind in CORRECTIONS:
                if kind == "resolutions" and len(self.resolutions()) < 2:
                    continue  # one resolution: its scale is the line's
                feats = np.array([self._features(kind, c) for c, _ in samples])
                norm = float(np.mean(raw ** 2)) if kind == "resolutions" else 1.0  # features in ms / unitless
                for weighted in bases:
                    base = self._base(raw, wts if weighted else None)
                    a, coef, err = _joint_ridge_loo(base, feats, meas, norm)
                    if coef is None or (weighted and coef[1] <= 0):
                        continue  # weights that would make a model faster: not a price to steer by
                    if kind == "resolutions" and np.min(coef[0] + coef[base.shape[1]:]) <= 0:
                        continue  # a resolution whose channels would cost nothing (or pay back): not a price either
                    if np.isfinite(err):
                        key = kind if weighted == line_weighted else f"{kind}, weight term {'on' if weighted else 'off'}"
                        tried[key] = err
                    if err < loo - 1e-12:
                        best, alpha, loo = (kind, coef, feats, base, weighted), a, err
            if best is not None:
                kind, coef, feats, base, weighted = best
                k0 = base.shape[1]
                self.scale, self.offset_ms = float(coef[0]), float(coef[k0 - 1])
                self.weight_ms = float(coef[1]) if weighted else 0.0
                self.residual, self.correction = coef[k0:], kind
                pred = np.column_stack([base, feats]) @ coef
        if self.weight_ms == 0.0:
            self.weight_floor_m = 0.0  # no term: no floor to report
        self.fit = {"samples": len(samples), "scale": self.scale, "offset_ms": self.offset_ms,
                    "weight_ms_per_million": self.weight_ms, "weight_floor_m": self.weight_floor_m,
                    "line_loo_mean_rel_error": line_loo,
                    "max_rel_error": float(np.max(np.abs(pred - meas) / meas)),
                    "correction": None if self.residual is None else
                    {"kind": CORRECTIONS[self.correction], "features": self.correction, "alpha": alpha,
                     "loo_mean_rel_error": loo, "tried": tried}}
        if self.residual is None and line_loo is None and len(samples) >= 3 and np.ptp(raw) >= 1e-9:
            line_loo = _loo_error(self._base(raw, None), meas)  # the floor's score when the term was never tried
        return self.fit, (loo if self.residual is not None else line_loo)


RESIDUAL_MIN_SAMPLES = 8
CORRECTIONS = {"resolutions": "one scale per input resolution, ridge towards the common scale",
               "cuts": "ridge on per-group cut shares"}
# Cache floors tried for the weight term, millions of weights (4-24 MB in fp32): a whole model whose weights fit in
# the last-level cache keeps them there from one inference to the next, so only the weights beyond what the
# runtime keeps cached stream from memory. The floor is chosen by leave-one-out error, never read from the CPU
# (the runtime's own buffers and the activations share the cache). OpenVINO, ResNet-18 @96 on a 32-MB L3:
# 2-4 M (bench/RESULTS.md §4, session 31)
WEIGHT_FLOORS_M = (1.0, 2.0, 3.0, 4.0, 6.0)
WEIGHT_MIN_SAMPLES = 5   # the line with the weight term has three coefficients: leave-one-out needs a few more
RIDGE_ALPHAS = (0.01, 0.1, 1.0, 10.0)  # x a squared typical figure of the features' columns


def _least_squares(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.linalg.lstsq(x, y, rcond=None)[0]


def _loo_error(x: np.ndarray, y: np.ndarray, fit=_least_squares) -> float:
    """Leave-one-out mean relative error of ``fit(x, y)`` (coefficients; least squares by default), refitted
    without each sample in turn."""
    errs = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        errs.append(abs(float(x[i] @ fit(x[keep], y[keep])) - y[i]) / y[i])
    return float(np.mean(errs))


def _joint_ridge_loo(base: np.ndarray, feats: np.ndarray, meas: np.ndarray, norm: float
                     ) -> tuple[float | None, np.ndarray | None, float]:
    """(alpha, coefficients, leave-one-out mean relative error) of the best least-squares fit of ``meas`` on the
    columns of ``base`` (free) and ``feats`` (ridge-penalised by alpha x ``norm``), the fit redone without each
    sample in turn; (None, None, inf) when the system is singular."""
    x = np.column_stack([base, feats])
    k0 = base.shape[1]
    best: tuple[float | None, np.ndarray | None, float] = (None, None, float("inf"))
    for alpha in RIDGE_ALPHAS:
        pen = np.diag([0.0] * k0 + [alpha * norm] * feats.shape[1])
        ridge = lambda xs, ys: np.linalg.solve(xs.T @ xs + pen, xs.T @ ys)
        try:
            err, coef = _loo_error(x, meas, ridge), ridge(x, meas)
        except np.linalg.LinAlgError:
            continue
        if err < best[2] - 1e-12:
            best = (alpha, coef, err)
    return best
