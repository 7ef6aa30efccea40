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
the correction below) and comes out positive.
Once enough models are measured (``RESIDUAL_MIN_SAMPLES``: the calibration plus a search's candidates), a
*measured correction* is added: a ridge regression of what the line still misses on each group's cut share
(1 - count/width), so the allocations the table misprices (a layout that suits some widths and not others,
on this runtime) are priced by what was measured. Its strength is chosen by leave-one-out error, and "no
correction" is one of the choices, so it is used only where it predicts held-out measurements better.
Invariant: with no calibration the prediction is the plain sum (scale 1, offset 0).
Imports without torch: layers are any objects with ``.sig`` and ``.channels(counts)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
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
    residual: np.ndarray | None = None   # the measured correction's weights, one per group (None: not used)
    widths: np.ndarray | None = None
    weight_layers: Sequence[Any] | None = None  # the unfused layers whose weights the weight term counts
    weight_ms: float = 0.0                  # ms per million weights (0: no weight term)

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

    def predict(self, counts: Sequence[int]) -> float:
        base = self.scale * self.raw_ms(counts) + self.offset_ms
        if self.weight_ms:
            base += self.weight_ms * self.weights_m(counts)
        if self.residual is None:
            return base
        return base + float(np.dot(self._cuts(counts), self.residual))

    def _cuts(self, counts: Sequence[int]) -> np.ndarray:
        return 1.0 - np.asarray(counts, dtype=np.float64) / self.widths

    def calibrate(self, samples: Sequence[tuple[Sequence[int], float]]) -> dict[str, Any]:
        """Fit scale/offset to (counts, measured ms) pairs (one pair fits the offset only), then the measured
        correction when there are enough pairs (see the module docstring)."""
        raw = np.array([self.raw_ms(c) for c, _ in samples])
        meas = np.array([m for _, m in samples])
        self.weight_ms, line_loo = 0.0, None
        line = None
        if len(samples) == 1 or np.ptp(raw) < 1e-9:
            self.scale, self.offset_ms = 1.0, float(np.mean(meas - raw))
        else:
            a, b = np.polyfit(raw, meas, 1)
            self.scale, self.offset_ms = float(a), float(b)
            if self.weight_layers and len(samples) >= WEIGHT_MIN_SAMPLES:
                wts = np.array([self.weights_m(c) for c, _ in samples])
                line_loo = _loo_error(np.column_stack([raw, np.ones_like(raw)]), meas)
                x = np.column_stack([raw, wts, np.ones_like(raw)])
                (a2, w2, b2), *_ = np.linalg.lstsq(x, meas, rcond=None)
                with_weights = _loo_error(x, meas)
                if a2 > 0 and w2 > 0 and with_weights < line_loo - 1e-12:
                    self.scale, self.weight_ms, self.offset_ms = float(a2), float(w2), float(b2)
                    line_loo, line = with_weights, x @ np.array([a2, w2, b2])
        if line is None:
            line = self.scale * raw + self.offset_ms
        self.residual, alpha, loo = None, None, float(np.mean(np.abs(line - meas) / meas))
        pred = line
        if len(samples) >= RESIDUAL_MIN_SAMPLES:
            self.widths = np.max(np.array([list(c) for c, _ in samples], dtype=np.float64), axis=0)
            x = np.array([self._cuts(c) for c, _ in samples])
            alpha, self.residual, loo = _ridge_loo(x, meas - line, meas, loo)
            if self.residual is not None:
                pred = line + x @ self.residual
        self.fit = {"samples": len(samples), "scale": self.scale, "offset_ms": self.offset_ms,
                    "weight_ms_per_million": self.weight_ms, "line_loo_mean_rel_error": line_loo,
                    "max_rel_error": float(np.max(np.abs(pred - meas) / meas)),
                    "correction": None if self.residual is None else
                    {"kind": "ridge on per-group cut shares", "alpha": alpha, "loo_mean_rel_error": loo}}
        return self.fit


RESIDUAL_MIN_SAMPLES = 8
WEIGHT_MIN_SAMPLES = 5   # the line with the weight term has three coefficients: leave-one-out needs a few more
RIDGE_ALPHAS = (0.01, 0.1, 1.0, 10.0)


def _loo_error(x: np.ndarray, y: np.ndarray) -> float:
    """Leave-one-out mean relative error of the least-squares fit of ``y`` on the columns of ``x``."""
    errs = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        w, *_ = np.linalg.lstsq(x[keep], y[keep], rcond=None)
        errs.append(abs(float(x[i] @ w) - y[i]) / y[i])
    return float(np.mean(errs))


def _ridge_loo(x: np.ndarray, r: np.ndarray, meas: np.ndarray, no_correction_error: float
               ) -> tuple[float | None, np.ndarray | None, float]:
    """(alpha, weights, leave-one-out mean relative error) of the best ridge fit of residuals ``r`` on ``x``,
    or (None, None, ``no_correction_error``) when no strength beats leaving the line alone."""
    best: tuple[float | None, np.ndarray | None, float] = (None, None, no_correction_error)
    n, k = x.shape
    for alpha in RIDGE_ALPHAS:
        a = x.T @ x + alpha * np.eye(k)
        w = np.linalg.solve(a, x.T @ r)
        hat = np.einsum("ij,jk,ik->i", x, np.linalg.inv(a), x)
        loo_res = (r - x @ w) / np.maximum(1.0 - hat, 1e-6)
        err = float(np.mean(np.abs(loo_res) / meas))
        if err < best[2] - 1e-12:
            best = (alpha, w, err)
    return best
