"""Paired measurement (``measure.paired``): bursts against a reference cancel a shared machine's load phases.

The pure parts run on a fake clock and fake models whose speed changes in phases, as a shared core's does;
one test measures two real ONNX Runtime artifacts of different widths in a fresh process.
"""
from __future__ import annotations

import pytest

from edgeprune.measure.paired import WARM_CALLS, burst_cycles, measure_paired, summarize
from edgeprune.measure.protocol import MeasureSettings, MeasurementError
from tests.conftest import export_onnx, make_tiny_cnn
from tests.test_measure import _compile, _ort


class PhasedMachine:
    """A fake clock (ns) and fake models: each call costs the model's time times the current phase's slowdown,
    and the phase changes every ``calls_per_phase`` calls (about one cycle here), between 1x and 2x."""

    def __init__(self, cost_ms: dict[str, float], calls_per_phase: int, phases=(1.0, 2.0, 1.3, 1.8)):
        self.now, self.calls, self.cost, self.per, self.phases = 0, 0, cost_ms, calls_per_phase, phases
        self.order: list[str] = []

    def clock(self) -> int:
        return self.now

    def runner(self, name: str):
        def run():
            phase = self.phases[(self.calls // self.per) % len(self.phases)]
            self.now += int(self.cost[name] * phase * 1e6)
            self.calls += 1
            if not self.order or self.order[-1] != name:
                self.order.append(name)
        return run


def test_bursts_rotate_and_ratios_cancel_the_phases():
    cost = {"ref": 1.0, "half": 0.5, "slow": 1.5}
    calls = {"ref": 10, "half": 10, "slow": 10}
    per_cycle = sum(c + WARM_CALLS for c in calls.values())
    m = PhasedMachine(cost, calls_per_phase=per_cycle)
    bursts = burst_cycles({n: m.runner(n) for n in cost}, cycles=8, calls=calls, clock=m.clock)
    # every model once per cycle, the order rotating: ref half slow, half slow ref, slow ref half, ...
    assert m.order[:9] == ["ref", "half", "slow", "half", "slow", "ref", "slow", "ref", "half"]
    assert all(len(v) == 8 for v in bursts.values())
    # the raw burst medians swing with the phases (up to 2x) ...
    assert max(bursts["ref"]) / min(bursts["ref"]) == pytest.approx(2.0)
    # ... the ratios to the reference in the same cycle do not
    out = summarize(bursts, "ref")
    assert out["ref"]["ratio"] == 1.0
    assert out["half"]["ratio"] == pytest.approx(0.5) and out["slow"]["ratio"] == pytest.approx(1.5)
    lo, hi = out["half"]["ratio_interval"]
    assert lo == pytest.approx(0.5) and hi == pytest.approx(0.5)
    # the scale is the reference's quiet (25th percentile) burst latency, or the caller's figure
    assert out["ref"]["reference_quiet_ms"] == pytest.approx(1.0, rel=0.35)
    assert out["half"]["p50_ms"] == pytest.approx(0.5 * out["ref"]["reference_quiet_ms"])
    fixed = summarize(bursts, "ref", reference_ms=4.0)
    assert fixed["slow"]["p50_ms"] == pytest.approx(6.0) and fixed["ref"]["p50_ms"] == 4.0


def test_a_burst_median_ignores_a_phase_change_inside_it():
    # a burst that straddles a phase change: its median stays at the majority phase's figure
    m = PhasedMachine({"ref": 1.0}, calls_per_phase=9, phases=(1.0, 3.0))
    got = burst_cycles({"ref": m.runner("ref")}, cycles=1, calls={"ref": 11}, clock=m.clock)["ref"][0]
    assert got == pytest.approx(1.0)


def test_ratios_come_from_the_quiet_cycles():
    # a loaded phase slows the reference 1.8x but the small model only 1.5x: the ratio read in it is off
    quiet_ref, quiet_small = 1.0, 0.5
    phases = [1.0, 1.8, 1.0, 1.8, 1.8, 1.0, 1.0, 1.8, 1.0, 1.0, 1.8, 1.0]
    ref = [quiet_ref * p for p in phases]
    small = [quiet_small * (1.5 if p > 1 else 1.0) for p in phases]
    out = summarize({"ref": ref, "small": small}, "ref")
    assert out["small"]["ratio"] == pytest.approx(0.5) and out["small"]["quiet_cycles"] == 7
    # too few quiet cycles: every cycle counts
    few = summarize({"ref": ref[:4], "small": small[:4]}, "ref")
    assert few["small"]["quiet_cycles"] == 4


def test_summarize_refuses_unequal_cycles():
    with pytest.raises(ValueError, match="bursts"):
        summarize({"ref": [1.0, 1.0], "b": [1.0]}, "ref")


def test_measure_paired_on_real_artifacts(tiny_onnx, tmp_path):
    _ort()
    wide = export_onnx(make_tiny_cnn(width=96), (1, 1, 28, 28), tmp_path / "wide.onnx")
    arts = {"narrow": _compile("onnxruntime", tiny_onnx, tmp_path / "a").path,
            "wide": _compile("onnxruntime", wide, tmp_path / "b").path}
    settings = MeasureSettings(threads=1, warmup_s=0.1, min_seconds=0.3, timeout_s=60.0)
    out = measure_paired(arts, settings, rounds=1, burst_s=0.02)
    assert out["narrow"]["ratio"] == 1.0 and out["narrow"]["reference"] == "narrow"
    assert out["wide"]["ratio"] > 1.5  # six times the channels of the reference
    assert out["wide"]["cycles"] == out["narrow"]["cycles"] >= 10
    lo, hi = out["wide"]["ratio_interval"]
    assert lo <= out["wide"]["ratio"] <= hi
    assert out["wide"]["p50_ms"] == pytest.approx(out["wide"]["ratio"] * out["narrow"]["p50_ms"])


def test_measure_paired_failure_is_one_clear_error(tmp_path, tiny_onnx):
    _ort()
    good = _compile("onnxruntime", tiny_onnx, tmp_path / "a").path
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{}")
    settings = MeasureSettings(threads=1, warmup_s=0.05, min_seconds=0.1, timeout_s=60.0)
    with pytest.raises(MeasurementError, match="paired measurement of a, broken failed"):
        measure_paired({"a": good, "broken": broken}, settings, rounds=1)
