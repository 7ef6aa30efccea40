"""Whole-model latency from the lookup table: sum of layer latencies, corrected by a fitted line.

predicted(counts) = scale * sum_L table[L.sig](in_c(L), out_c(L)) + offset_ms

L runs over the plan's entries: layers, and fused units where the runtime fuses a chain of
layers (``search.units``: the unit's row replaces its layers'). Table figures are net of each
micro-model's own input/output cost (``measure.lut_rows``), so the sum is close to the model's
compute; it still misses what micro-benchmarks cannot see (pooling, additions outside units,
memory traffic between units, the runtime's per-inference overhead); ``calibrate`` fits ``scale`` and ``offset_ms`` by least squares on whole-model
measurements (at least the unpruned model; more variants give a better line).
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

    def layer_ms(self, counts: Sequence[int]) -> list[float]:
        out = []
        for layer in self.layers:
            cin, cout = layer.channels(list(counts))
            out.append(self.rows[layer.sig.key()].lookup(cin, cout))
        return out

    def raw_ms(self, counts: Sequence[int]) -> float:
        return float(sum(self.layer_ms(counts)))

    def predict(self, counts: Sequence[int]) -> float:
        return self.scale * self.raw_ms(counts) + self.offset_ms

    def calibrate(self, samples: Sequence[tuple[Sequence[int], float]]) -> dict[str, Any]:
        """Fit scale/offset to (counts, measured ms) pairs; one pair fits the offset only."""
        raw = np.array([self.raw_ms(c) for c, _ in samples])
        meas = np.array([m for _, m in samples])
        if len(samples) == 1 or np.ptp(raw) < 1e-9:
            self.scale, self.offset_ms = 1.0, float(np.mean(meas - raw))
        else:
            a, b = np.polyfit(raw, meas, 1)
            self.scale, self.offset_ms = float(a), float(b)
        pred = self.scale * raw + self.offset_ms
        self.fit = {"samples": len(samples), "scale": self.scale, "offset_ms": self.offset_ms,
                    "max_rel_error": float(np.max(np.abs(pred - meas) / meas))}
        return self.fit
