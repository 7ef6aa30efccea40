"""The ``--budget-ms`` search honours the build's channel multiple and its kept layers.

The multiple is the one the build computes (``--round-to`` or the profile's multiple for the
precision), not ``profile["channel_multiple"]``; a kept layer (``--keep``) keeps all its channels.
The runtime is replaced by a deterministic cost model (latency = 1e-4 ms per in x out x kernel
area) so the search, its table and the measured check agree exactly and run in seconds.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune.measure import lut_build
from edgeprune.measure.lut import SigTable
from edgeprune.measure.protocol import MeasureSettings
from edgeprune.models import build_model
from edgeprune.profiles import load_profile
from edgeprune.prune.base import PruneContext
from edgeprune.search import hardware
from edgeprune.search.driver import prune_to_budget

EXAMPLE = torch.zeros(1, 1, 16, 16)
PER_MAC = 1e-4


def _area(kind: str, kernel) -> int:
    return 1 if kind == "linear" else kernel[0] * kernel[1]


def _unit_cost(sig, a: int, b: int) -> float:
    """A fused unit costs the sum of its layers in this model: no runtime fuses, so no unit is used."""
    from edgeprune.measure.micro_units import parse_step

    total, width = 0.0, a
    for step in map(parse_step, sig.steps):
        out = width if step["op"] == "dw" else (a if step["to"] == "a" else b)
        total += PER_MAC * step["k"] ** 2 * (1 if step["op"] == "dw" else width) * out
        width = out
    return total


def _fake_row(profile, precision, threads, sig, ins, outs, rounds, timeout_s) -> SigTable:
    if sig.kind == "unit":
        return SigTable(sig, ins, outs, [[_unit_cost(sig, i, o) for o in outs] for i in ins])
    area = _area(sig.kind, sig.kernel)
    if sig.kind == "depthwise":
        return SigTable(sig, ins, [ins[-1]], [[PER_MAC * c * area] for c in ins])
    return SigTable(sig, ins, outs, [[PER_MAC * i * o * area for o in outs] for i in ins])


def _fake_measure(self, model: nn.Module, repeats: int = 2, out=lambda c: c) -> float:
    """The cost model's latency of ``model``; ``out`` maps a layer's output channels to what they cost."""
    total = 0.0
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            total += PER_MAC * m.in_channels * out(m.out_channels) * m.kernel_size[0] * m.kernel_size[1] / m.groups
        elif isinstance(m, nn.Linear):
            total += PER_MAC * m.in_features * out(m.out_features)
    return total


def _install(monkeypatch, tmp_path, row, measure) -> None:
    """The runtime replaced: table rows from ``row``, every model measured by ``measure``; a fresh cache."""
    monkeypatch.setenv("EDGEPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(lut_build, "_measure_row", row)
    monkeypatch.setattr(hardware.HardwareSearch, "measure_models",
                        lambda self, models, rounds=2: {n: measure(self, m) for n, m in models.items()})


@pytest.fixture
def fake_runtime(monkeypatch, tmp_path):
    _install(monkeypatch, tmp_path, _fake_row, _fake_measure)


def _budget_run(round_to: int, keep: tuple[str, ...] = (), budget: str = "0.5x", attempts: int = 3):
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=1).eval()
    profile = {**load_profile("onnxruntime"), "precision": "fp32"}
    assert profile["channel_multiple"] == 8
    pctx = PruneContext(example_inputs=EXAMPLE, round_to=round_to, ignored_layers=keep, progress=False,
                        options={"method": "l1"})
    result, search = prune_to_budget(model, EXAMPLE, profile, budget, "l1", pctx, 1, None, attempts, False)
    return model, result, search


def test_budget_search_uses_the_given_multiple_not_the_profiles(fake_runtime):
    _, result, search = _budget_run(16)
    assert search["table"]["channel_multiple"] == 16
    groups = search["groups"]
    assert any(g["kept"] < g["width"] for g in groups)
    assert all(g["kept"] % 16 == 0 or g["kept"] == g["width"] for g in groups), groups
    assert result.round_to == 16
    assert search["measured_ms"] <= search["budget_ms"]


def test_budget_search_keeps_kept_layers_whole(fake_runtime):
    model, result, search = _budget_run(8, keep=("layer2.0.conv1", "layer3"), budget="0.8x")
    before = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    after = {n: m.out_channels for n, m in result.model.named_modules() if isinstance(m, nn.Conv2d)}
    kept = [n for n in before if n == "layer2.0.conv1" or n.startswith("layer3.")]
    assert all(after[n] == before[n] for n in kept), {n: (before[n], after[n]) for n in kept}
    assert not any(g["group"] in kept for g in search["groups"])
    assert sum(after.values()) < sum(before.values())


def _paired_search(monkeypatch, tmp_path, fake_paired) -> hardware.HardwareSearch:
    """A ResNet-20 ``HardwareSearch`` on the cost model's table, whose artifacts hold their cost-model latency (plus
    a fixed per-call overhead of 0.05 ms) and whose paired measurements go to ``fake_paired``."""
    monkeypatch.setenv("EDGEPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(lut_build, "_measure_row", _fake_row)

    def fake_compile(self, model, folder):
        folder.mkdir(parents=True)
        (folder / "ms").write_text(repr(_fake_measure(self, model) + 0.05))
        return folder

    monkeypatch.setattr(hardware, "measure_paired", fake_paired)
    monkeypatch.setattr(hardware.HardwareSearch, "_compile", fake_compile)
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=1).eval()
    return hardware.HardwareSearch(model, EXAMPLE, {**load_profile("onnxruntime"), "precision": "fp32"}, "fp32", 1,
                                   MeasureSettings(threads=1), progress=False, multiple=8)


def test_calibration_and_later_measurements_are_paired_against_the_unpruned_model(monkeypatch, tmp_path):
    """``calibrate`` measures the unpruned model, three uniform variants and mixed ones (a random half of the
    groups halved) in ONE paired measurement (bursts
    against the unpruned model, ``CALIBRATION_ROUNDS`` processes); a phase of load that slows every model in a
    cycle does not move the fit. Every later measurement is paired against the unpruned model again and put
    on the calibration's scale, so a budget and the candidates measured against it agree."""
    from edgeprune.measure.paired import summarize

    calls = []
    phases = [1.0, 3.0, 1.0, 1.0, 2.0, 1.0, 1.0, 1.5]  # the machine's slowdown in each cycle

    def fake_paired(artifacts, settings, rounds=2, reference=None, reference_ms=None, **kw):
        calls.append((list(artifacts), rounds, reference))
        bursts = {name: [float((Path(art) / "ms").read_text()) * p for p in phases] for name, art in artifacts.items()}
        return summarize(bursts, reference or list(artifacts)[0], reference_ms)

    hs = _paired_search(monkeypatch, tmp_path, fake_paired)
    model = hs.model
    fit = hs.calibrate()
    names = ["unpruned", "uniform-0.25", "uniform-0.5", "uniform-0.75"]
    assert len(calls) == 2 and calls[0][0][:4] == names and calls[0][1:] == (hardware.CALIBRATION_ROUNDS, None)
    assert calls[1] == (["unpruned"], 1, None)  # the check: the unpruned model alone, one process
    mixed = calls[0][0][4:]
    assert 1 <= len(mixed) <= 2 * hardware.CALIBRATION_MIXED and all(n.startswith("mixed-") for n in mixed)
    drawn = hardware.mixed_counts(hs.widths, hs.multiples, hardware.CALIBRATION_MIXED)
    half = hardware.mixed_counts(hs.widths, hs.multiples, hardware.CALIBRATION_MIXED, "random")
    every = hardware.mixed_counts(hs.widths, hs.multiples, hardware.CALIBRATION_MIXED, "random-all")
    assert drawn == half + every  # the default kind: 8 models that cut some groups, then 8 that cut every group
    for counts, _ in hs.samples[4:]:
        assert counts in drawn and counts != hs.widths
    some = [c for c, _ in hs.samples[4:] if c in half]
    assert some and all(all(c == w or 0.25 * w - 8 <= c <= 0.75 * w + 8 for c, w in zip(counts, hs.widths))
                        for counts in some)  # some groups cut, to their own depths
    assert fit["samples"] == 4 + len(mixed) and hs.samples[0][0] == hs.widths
    true_base = _fake_measure(hs, model) + 0.05
    assert hs.baseline_ms == pytest.approx(true_base)  # the quiet phase's figure, not a loaded one
    assert fit["scale"] == pytest.approx(1.0) and fit["offset_ms"] == pytest.approx(0.05)
    assert fit["calibration"]["rounds"] == hardware.CALIBRATION_ROUNDS
    # later: against the unpruned model, on the calibration's scale
    hs.samples[0] = (hs.samples[0][0], 2 * true_base)  # pretend the calibration had put the baseline at 2x
    half = hs.prune_counts([w // 2 for w in hs.widths], [np.ones(w) for w in hs.widths])
    got = hs.measure_models({"half": half})
    assert calls[-1][0] == [hardware.REFERENCE, "half"] and calls[-1][2] == hardware.REFERENCE
    assert got["half"] == pytest.approx(2 * (_fake_measure(hs, half) + 0.05))


def _busy_calibration(monkeypatch, tmp_path, busy_passes: int):
    """A ``HardwareSearch`` whose paired measurements follow the cost model, except in the first ``busy_passes``
    calibration passes: there a neighbour slows the unpruned model by 1.3x and the pruned ones by 1.04x (what a
    memory-streaming neighbour did to ResNet-18 @96 on OpenVINO, session 36). Checks (the reference alone) and
    later passes run on the quiet machine. Returns the search and the list of measured name lists."""
    from edgeprune.measure.paired import summarize

    calls = []

    def fake_paired(artifacts, settings, rounds=2, reference=None, reference_ms=None, **kw):
        calls.append(list(artifacts))
        passes = sum(len(c) > 1 for c in calls)  # calibration passes so far, this one included
        busy = len(artifacts) > 1 and passes <= busy_passes
        bursts = {}
        for name, art in artifacts.items():
            ms = float((Path(art) / "ms").read_text())
            slow = (1.3 if name == "unpruned" else 1.04) if busy else 1.0
            bursts[name] = [ms * slow] * 8
        return summarize(bursts, reference or list(artifacts)[0], reference_ms)

    return _paired_search(monkeypatch, tmp_path, fake_paired), calls


def test_a_calibration_measured_in_a_busy_phase_is_measured_again(monkeypatch, tmp_path, capsys):
    """The check after the calibration finds the unpruned model 23% faster than the calibration did: the pass is
    measured again, the quiet pass is kept (its ratios, not the busy pass's), and the report records both."""
    hs, calls = _busy_calibration(monkeypatch, tmp_path, busy_passes=1)
    fit = hs.calibrate(mixed=0)
    assert [len(c) > 1 for c in calls] == [True, False, True, False]  # pass, check, pass, check
    quiet_base = _fake_measure(hs, hs.model) + 0.05
    passes = fit["calibration"]["passes"]
    assert [p["kept"] for p in passes] == [False, True]
    assert passes[0]["unpruned_ms"] == pytest.approx(1.3 * quiet_base)
    assert passes[0]["check_ms"] == pytest.approx(quiet_base) == passes[1]["check_ms"]
    assert hs.baseline_ms == pytest.approx(quiet_base)
    half = hs.prune_counts(hs.samples[2][0], [np.ones(w) for w in hs.widths])
    assert hs.samples[2][1] == pytest.approx(_fake_measure(hs, half) + 0.05)  # the quiet ratio, on the quiet scale
    assert "calibration measured again" in capsys.readouterr().err
    from edgeprune.report import _calibration_lines

    line = _calibration_lines(hs.calibration)[0]  # the build's report.md says so, with the figures
    assert "measured 2 times" in line and f"check {quiet_base:.3f} ms (**kept**)" in line
    assert _calibration_lines({**hs.calibration, "passes": passes[:1]}) == []  # one pass: nothing to say


def test_a_calibration_that_stays_busy_keeps_its_least_disturbed_pass_and_says_so(monkeypatch, tmp_path, capsys):
    hs, calls = _busy_calibration(monkeypatch, tmp_path, busy_passes=10)
    fit = hs.calibrate(mixed=0, repeats=1)
    assert sum(len(c) > 1 for c in calls) == 2  # the first pass and one repeat, no more
    passes = fit["calibration"]["passes"]
    assert len(passes) == 2 and passes[0]["kept"] and not passes[1]["kept"]  # equal figures: the first stands
    assert "least disturbed pass is kept" in capsys.readouterr().err


def test_a_quiet_calibration_is_measured_once_and_the_check_can_be_turned_off(monkeypatch, tmp_path):
    hs, calls = _busy_calibration(monkeypatch, tmp_path, busy_passes=0)
    fit = hs.calibrate(mixed=0)
    assert len(calls) == 2 and len(fit["calibration"]["passes"]) == 1 and fit["calibration"]["passes"][0]["kept"]
    hs2, calls2 = _busy_calibration(monkeypatch, tmp_path / "off", busy_passes=1)
    fit2 = hs2.calibrate(mixed=0, repeats=0)
    assert len(calls2) == 1 and fit2["calibration"]["passes"] == [
        {"unpruned_ms": hs2.baseline_ms, "check_ms": None, "kept": True}]
    with pytest.raises(ValueError):
        hs2.calibrate()  # once, before any other measurement


def test_mixed_calibration_models_cut_some_groups_to_the_kinds_depths():
    widths, mults = [16] * 7 + [32] * 6 + [64] * 6 + [512], [8] * 19 + [16]
    halves = hardware.mixed_counts(widths, mults, 20, "halves")
    random = hardware.mixed_counts(widths, mults, 20, "random")
    every = hardware.mixed_counts(widths, mults, 20, "random-all")
    assert halves == hardware.mixed_counts(widths, mults, 20, "halves")  # seeded
    for kind, sets in (("halves", halves), ("random", random), ("random-all", every)):
        for counts in sets:
            assert all(0 < c <= w and (c == w or c % m == 0) for c, w, m in zip(counts, widths, mults)), kind
    # halves: a group is whole or half; random: a cut group keeps 25-75% (on its multiple), at several depths
    assert all(c in (w, w // 2) for counts in halves for c, w in zip(counts, widths))
    kept = [c for counts in random for c, w in zip(counts, widths) if w == 512 and c < w]
    assert kept and all(128 <= c <= 384 for c in kept) and len(set(kept)) >= 4
    assert sum(c < w for counts in random for c, w in zip(counts, widths)) < 0.7 * 20 * len(widths)
    # random-all: nearly every group is cut, some deep (below a quarter)
    assert sum(c < w // 4 for counts in every for c, w in zip(counts, widths) if w == 512) >= 2
    # kinds joined by '+': n of each, each drawn as it is alone
    assert hardware.mixed_counts(widths, mults, 20, "random+random-all") == random + every
    with pytest.raises(ValueError, match="unknown mixed calibration kind"):
        hardware.mixed_counts(widths, mults, 1, "thirds")


BLOCK = 16  # the staircase runtime below steps every 16 output channels, on the table's grid of 8


def _stair(o: int) -> int:
    return -(-o // BLOCK) * BLOCK


def _stair_row(profile, precision, threads, sig, ins, outs, rounds, timeout_s) -> SigTable:
    if sig.kind in ("conv", "linear"):
        area = _area(sig.kind, sig.kernel)
        return SigTable(sig, ins, outs, [[PER_MAC * i * _stair(o) * area for o in outs] for i in ins])
    return _fake_row(profile, precision, threads, sig, ins, outs, rounds, timeout_s)


@pytest.fixture
def stair_runtime(monkeypatch, tmp_path):
    _install(monkeypatch, tmp_path, _stair_row, lambda self, m: _fake_measure(self, m, out=_stair))


def test_search_reads_the_runtimes_channel_block_and_wide_groups_use_it(stair_runtime):
    """A runtime whose latency steps every 16 output channels: with no --round-to the search keeps multiples
    of 16 in groups at least 32 wide (24 channels would cost what 32 cost), 8 in the 16-wide ones; the report
    names the block and its evidence. With the block off (the user's --round-to), the grid stays 8."""
    from edgeprune.search.settings import SearchSettings

    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=1).eval()
    profile = {**load_profile("onnxruntime"), "precision": "fp32"}
    on = hardware.HardwareSearch(model, EXAMPLE, profile, "fp32", 1, MeasureSettings(threads=1), progress=False,
                                 multiple=8, channel_block=True)
    assert on.block.block == BLOCK and on.block.tried[BLOCK]["ratio"] == pytest.approx(0.0)
    assert on.block.tried[2 * BLOCK]["ratio"] > 0.1  # 32 is not a step of this runtime
    assert [m for w, m in zip(on.widths, on.multiples)] == [16 if w >= 32 else 8 for w in on.widths]
    off = hardware.HardwareSearch(model, EXAMPLE, profile, "fp32", 1, MeasureSettings(threads=1), progress=False,
                                  multiple=8, channel_block=False)
    assert off.block is None and set(off.multiples) == {8}

    pctx = PruneContext(example_inputs=EXAMPLE, round_to=8, progress=False, options={"method": "l1"})
    _, search = prune_to_budget(model, EXAMPLE, profile, "0.5x", "l1", pctx, 1, None, 3, False,
                                search=SearchSettings(strategy="greedy", channel_block=True))
    block = search["channel_block"]
    assert block["block"] == BLOCK and "every 16 output channels" in block["summary"]
    assert len(block["groups_on_block"]) == sum(w >= 32 for w in on.widths)
    groups = search["groups"]
    assert any(g["kept"] < g["width"] for g in groups if g["width"] >= 32)
    assert all(g["kept"] % 16 == 0 for g in groups if g["width"] >= 32), groups
    assert search["measured_ms"] <= search["budget_ms"]


def test_a_linear_runtime_keeps_the_grid(fake_runtime):
    """No staircase in the table (latency grows with every 8 channels): the grid stays the multiple."""
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=1).eval()
    hs = hardware.HardwareSearch(model, EXAMPLE, {**load_profile("onnxruntime"), "precision": "fp32"}, "fp32", 1,
                                 MeasureSettings(threads=1), progress=False, multiple=8, channel_block=True)
    assert hs.block.block == 8 and set(hs.multiples) == {8}
    assert hs.block_report()["groups_on_block"] == []


def test_the_build_uses_the_block_only_without_round_to():
    """``--round-to N`` is the user's grid everywhere; without it the build's search reads the runtime's block."""
    from edgeprune.build import BuildConfig, search_settings

    assert search_settings(BuildConfig(target="x86", data="fashion-mnist", out="x")).channel_block is True
    assert search_settings(BuildConfig(target="x86", data="fashion-mnist", out="x", round_to=8)).channel_block is False


def _miss_then_true(misses: list[float]):
    """``_fake_measure``, but the driver's checks (the model named "model") read ``misses[i]`` times the cost
    model on the i-th check (1 once the list runs out): a first check that misses by measurement alone."""
    checks = []

    def measure_models(self, models, rounds=2):
        out = {}
        for name, m in models.items():
            factor = 1.0
            if name == "model":
                factor = misses[len(checks)] if len(checks) < len(misses) else 1.0
                checks.append(factor)
            out[name] = factor * _fake_measure(self, m)
        return out

    return measure_models


def _attempts_run(monkeypatch, tmp_path, misses: list[float], attempts: int = 3):
    _install(monkeypatch, tmp_path, _fake_row, _fake_measure)
    monkeypatch.setattr(hardware.HardwareSearch, "measure_models", _miss_then_true(misses))
    return _budget_run(8, attempts=attempts)[2]


def test_a_retry_far_under_the_budget_aims_back_up(monkeypatch, tmp_path):
    """Attempt 1 measures 30% over (the measurement's doing: the cost model is exact); the tightened retry lands
    well under the budget; a third search aims back up between them and, within the budget, is returned: the
    most latency the budget allows, never a model that missed."""
    search = _attempts_run(monkeypatch, tmp_path, [1.3])
    tries, budget = search["attempts"], search["budget_ms"]
    assert tries[0]["measured_ms"] > budget
    assert tries[1]["measured_ms"] < budget * (1 - 0.06)  # the retry gave latency away ...
    assert len(tries) == 3 and tries[2]["search_target_ms"] > tries[1]["search_target_ms"]  # ... so it aimed back up
    assert tries[1]["measured_ms"] < tries[2]["measured_ms"] <= budget
    assert search["chosen_attempt"] == 3 and search["measured_ms"] == tries[2]["measured_ms"]
    kept = [g["kept"] for g in search["groups"]]
    assert kept == tries[2]["counts"] and sum(kept) > sum(tries[1]["counts"])


def test_a_miss_while_aiming_back_up_returns_the_attempt_within_the_budget(monkeypatch, tmp_path):
    """The third search (aiming back up) misses by measurement: the second, within the budget, is returned."""
    search = _attempts_run(monkeypatch, tmp_path, [1.3, 1.0, 1.3])
    tries, budget = search["attempts"], search["budget_ms"]
    assert len(tries) == 3 and tries[2]["measured_ms"] > budget
    assert search["chosen_attempt"] == 2 and search["measured_ms"] == tries[1]["measured_ms"] <= budget
    assert [g["kept"] for g in search["groups"]] == tries[1]["counts"]


def test_no_aim_back_up_without_a_miss_or_without_attempts_left(monkeypatch, tmp_path):
    """A first attempt within the budget stands (the search already steered to it); so does a retry when no
    attempt is left for another search."""
    search = _attempts_run(monkeypatch, tmp_path, [])
    assert len(search["attempts"]) == 1 and search["chosen_attempt"] == 1
    search = _attempts_run(monkeypatch, tmp_path, [1.3], attempts=2)
    assert len(search["attempts"]) == 2 and search["chosen_attempt"] == 2


def test_with_an_aim_later_models_are_measured_against_the_calibration_model_nearest_it(monkeypatch, tmp_path):
    """A busy phase slows a model by its size (a memory-streaming neighbour: the unpruned model 1.3x, a 0.3x cut
    about 1.1x). Measured against the unpruned model a 0.3x allocation then reads fast; against the calibration model
    nearest the search's aim (``near_ms``), on that model's calibrated figure, it reads its quiet figure."""
    from edgeprune.measure.paired import summarize

    calls, busy = [], [False]

    def fake_paired(artifacts, settings, rounds=2, reference=None, reference_ms=None, **kw):
        calls.append((list(artifacts), reference, reference_ms))
        ms = {n: float((Path(a) / "ms").read_text()) for n, a in artifacts.items()}
        top = _fake_measure(hs, hs.model) + 0.05
        bursts = {n: [m * (1 + 0.3 * m / top if busy[0] else 1.0)] * 8 for n, m in ms.items()}
        return summarize(bursts, reference or list(artifacts)[0], reference_ms)

    hs = _paired_search(monkeypatch, tmp_path, fake_paired)
    hs.calibrate(mixed=0)
    ones = [np.ones(w) for w in hs.widths]
    counts = [max(8, int(0.6 * w) // 8 * 8) for w in hs.widths]  # not a calibration model
    model = hs.prune_counts(counts, ones)
    quiet = _fake_measure(hs, model) + 0.05
    busy[0] = True
    against_unpruned = hs.measure_model(model)
    assert calls[-1][1] == hardware.REFERENCE and against_unpruned < 0.93 * quiet  # reads fast in the busy phase
    hs.near_ms = quiet
    compiled = len(list(Path(hs._reference_tmp.name).iterdir()))
    got = hs.measure_model(model)
    near = hs.calibration["near_reference"]
    assert calls[-1][1] == hardware.NEAR and calls[-1][0][0] == hardware.NEAR
    assert near["name"] == "uniform-0.5" and near["aim_ms"] == quiet  # the calibration model nearest the aim
    from edgeprune.report import _near_reference_lines

    assert "`uniform-0.5`" in _near_reference_lines(hs.calibration)[0]  # report.md names it
    assert _near_reference_lines({}) == []
    assert calls[-1][2] == pytest.approx(hs.calibration["models"]["uniform-0.5"]["ms"])
    assert got == pytest.approx(quiet, rel=0.02)
    hs.measure_model(model)
    assert len(list(Path(hs._reference_tmp.name).iterdir())) == compiled + 1  # compiled once, then reused
    hs.near_ms = 0.8 * (_fake_measure(hs, hs.model) + 0.05)
    hs.measure_model(model)
    assert hs.calibration["near_reference"]["name"] == "uniform-0.25"  # a new aim picks again
