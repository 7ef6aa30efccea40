"""Latency tables (real, cached), the predictor, and the budget search's guarantees."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeprune.measure.lut import LayerSig, SigTable, channel_grid, micro_onnx
from edgeprune.measure.lut_build import build_table
from edgeprune.measure.predictor import Predictor
from edgeprune.models import build_model
from edgeprune.profiles import load_profile
from edgeprune.prune.graph import PruneGraph
from edgeprune.search.budget import BudgetError, search_counts
from edgeprune.search.plan import build_plan, table_requests
from tests.conftest import make_tiny_cnn

EXAMPLE = torch.zeros(1, 1, 28, 28)


@pytest.fixture(scope="module")
def tiny_plan():
    graph = PruneGraph(make_tiny_cnn(), EXAMPLE)
    return graph, build_plan(graph)


@pytest.fixture(scope="module")
def real_table(tmp_path_factory, tiny_plan):
    cache = tmp_path_factory.mktemp("lutcache")
    table = build_table(load_profile("onnxruntime"), table_requests(tiny_plan[1]), precision="fp32",
                        threads=1, rounds=2, cache_dir=cache, progress=False)
    return table, cache


def test_plan_maps_every_layer_to_its_groups(tiny_plan):
    graph, plan = tiny_plan
    assert [layer.name for layer in plan] == ["conv1", "conv2", "conv3", "fc"]
    full = [g.channels for g in graph.groups]
    assert [layer.channels(full) for layer in plan] == [(1, 16), (16, 16), (16, 32), (32, 10)]
    assert plan[0].in_group is None and plan[-1].out_group is None


def test_table_is_measured_then_reused_from_cache(real_table, tiny_plan):
    table, cache = real_table
    assert table["meta"]["rows_measured"] == 3 and table["meta"]["points_measured"] > 0
    assert all(v > 0 for row in table["rows"].values() for line in row.ms for v in line)
    again = build_table(load_profile("onnxruntime"), table_requests(tiny_plan[1]), precision="fp32",
                        threads=1, rounds=2, cache_dir=cache, progress=False)
    assert again["meta"]["rows_measured"] == 0 and again["meta"]["rows_from_cache"] == 3
    assert {k: r.ms for k, r in again["rows"].items()} == {k: r.ms for k, r in table["rows"].items()}
    # a different thread count is a different table: nothing reused
    other = build_table(load_profile("onnxruntime"), table_requests(tiny_plan[1])[-1:], precision="fp32",
                        threads=2, rounds=1, cache_dir=cache, progress=False)
    assert other["meta"]["rows_measured"] == 1


def test_lookup_hits_grid_and_interpolates_inputs():
    sig = LayerSig("conv", (3, 3), (1, 1), (1, 1), (8, 8))
    row = SigTable(sig, [8, 24], [8, 16, 24], [[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])
    assert row.lookup(8, 16) == 2.0 and row.lookup(24, 24) == 5.0
    assert row.lookup(16, 8) == pytest.approx(2.0)  # halfway between in=8 and in=24
    assert row.lookup(8, 12) == pytest.approx(1.5)  # between measured out-counts: linear
    with pytest.raises(KeyError):
        row.lookup(8, 32)  # outside the measured range
    assert channel_grid(20, 8) == [8, 16, 20]


def test_micro_model_runs(tmp_path):
    import onnxruntime as ort

    path = micro_onnx(LayerSig("depthwise", (3, 3), (2, 2), (1, 1), (14, 14)), 24, 24, tmp_path / "m.onnx")
    out = ort.InferenceSession(str(path)).run(None, {"x": np.ones((1, 24, 14, 14), np.float32)})[0]
    assert out.shape == (1, 24, 7, 7) and (out >= 0).all()


def _staircase_predictor(plan):
    """A synthetic table with a staircase of step 8 on every layer (channel multiple 4)."""
    grids: dict = {}
    for layer in plan:
        ins, outs = grids.setdefault(layer.sig, (set(), set()))
        ins.update(channel_grid(layer.in_c, 4), {layer.in_c})
        outs.update(channel_grid(layer.out_c, 4))
    rows = {}
    for sig, (ins, outs) in grids.items():
        ins, outs = sorted(ins), sorted(outs)
        ms = [[0.01 * ((i + 7) // 8) * ((o + 7) // 8) for o in outs] for i in ins]
        rows[sig.key()] = SigTable(sig, ins, outs, ms)
    return Predictor(rows, plan)


@pytest.mark.parametrize("share", [0.95, 0.8, 0.6, 0.45, 0.3])
def test_search_never_exceeds_predicted_budget(tiny_plan, share):
    graph, plan = tiny_plan
    pred = _staircase_predictor(plan)
    widths = [g.channels for g in graph.groups]
    rng = np.random.default_rng(1)
    budget = share * pred.predict(widths)
    found = search_counts(pred, widths, [rng.random(w) for w in widths], budget, 4, [4] * len(widths))
    assert found.predicted_ms <= budget + 1e-12
    assert pred.predict(found.counts) == pytest.approx(found.predicted_ms)
    assert all(c % 4 == 0 and c >= 4 for c in found.counts)


def test_search_uses_the_staircase(tiny_plan):
    """On a step-8 staircase, 4 channels cost as much as 8: the search never stops mid-step."""
    graph, plan = tiny_plan
    pred = _staircase_predictor(plan)
    widths = [g.channels for g in graph.groups]
    for share in (0.8, 0.5, 0.3):
        found = search_counts(pred, widths, [np.ones(w) for w in widths], share * pred.predict(widths), 4, [4] * 2)
        assert all(c % 8 == 0 for c in found.counts), found.counts


def test_impossible_budget_is_a_clear_error(tiny_plan):
    graph, plan = tiny_plan
    pred = _staircase_predictor(plan)
    widths = [g.channels for g in graph.groups]
    with pytest.raises(BudgetError, match="cannot be met"):
        search_counts(pred, widths, [np.ones(w) for w in widths], 1e-6, 4, [4] * len(widths))


def test_predictor_calibration_fits_a_line(tiny_plan, real_table):
    graph, plan = tiny_plan
    pred = Predictor(real_table[0]["rows"], plan)
    full = [g.channels for g in graph.groups]
    half = [8 for _ in full]
    raw_full, raw_half = pred.raw_ms(full), pred.raw_ms(half)
    fit = pred.calibrate([(full, 2 * raw_full + 0.1), (half, 2 * raw_half + 0.1)])
    assert fit["scale"] == pytest.approx(2.0) and fit["offset_ms"] == pytest.approx(0.1)
    assert pred.predict(full) == pytest.approx(2 * raw_full + 0.1)


def test_the_weight_term_prices_weights_the_micro_benchmarks_kept_in_cache():
    """Constructed: the 'runtime' charges for every weight of the allocation on top of the table (weights streamed
    from memory, which a micro-benchmark of one layer never does). The predictor with the model's layers fits that
    term from the calibration's twelve models and prices new mixed allocations far better than the line alone;
    where the runtime charges nothing for weights, the term stays off."""
    graph = PruneGraph(build_model("resnet20", num_classes=10, in_channels=1).eval(), torch.zeros(1, 1, 28, 28))
    plan = build_plan(graph)
    pred = _staircase_predictor(plan)
    pred.weight_layers = plan
    widths = [g.channels for g in graph.groups]
    per_million = 0.4 * pred.raw_ms(widths) / pred.weights_m(widths)  # weights: 40% of the table's full sum
    truth = lambda c: 1.1 * pred.raw_ms(c) + 0.02 + per_million * pred.weights_m(c)
    rng = np.random.default_rng(0)
    draw = lambda: [int(rng.choice(channel_grid(w, 4)[len(channel_grid(w, 4)) // 4:])) for w in widths]
    samples = [(widths, truth(widths))] + [(c, truth(c)) for c in (draw() for _ in range(11))]
    line_only = Predictor(pred.rows, pred.layers)
    line_only.calibrate(samples)
    fit = pred.calibrate(samples)
    assert fit["weight_ms_per_million"] == pytest.approx(per_million, rel=1e-6)
    new = [draw() for _ in range(30)]
    err = lambda p: max(abs(p.predict(c) - truth(c)) / truth(c) for c in new)
    assert err(pred) < 1e-6 < err(line_only)
    table_only = lambda c: 1.1 * pred.raw_ms(c) + 0.02
    fit = pred.calibrate([(c, table_only(c)) for c, _ in samples])
    assert fit["weight_ms_per_million"] == 0.0 and pred.weight_ms == 0.0
    assert pred.predict(new[0]) == pytest.approx(table_only(new[0]))


def test_the_weight_term_charges_only_weights_beyond_what_the_cache_keeps(monkeypatch):
    """Constructed: the 'runtime' keeps 0.12 M weights cached between inferences and streams only those beyond,
    at 6 ms per million (a model that fits in the last-level cache pays nothing for its weights; ResNet-18 at
    96 px on OpenVINO, session 31). The floor is found among the candidates by leave-one-out error, the price
    recovered, and new allocations predicted far better than by the term charging every weight; where the
    runtime charges every weight, no floor is kept. The floors are scaled to ResNet-20's 0.27 M weights."""
    import edgeprune.measure.predictor as predictor_module

    monkeypatch.setattr(predictor_module, "WEIGHT_FLOORS_M", (0.04, 0.08, 0.12, 0.16))
    graph = PruneGraph(build_model("resnet20", num_classes=10, in_channels=1).eval(), torch.zeros(1, 1, 28, 28))
    plan = build_plan(graph)
    pred = _staircase_predictor(plan)
    pred.weight_layers = plan
    widths = [g.channels for g in graph.groups]
    truth = lambda c: 1.1 * pred.raw_ms(c) + 0.02 + 6.0 * max(0.0, pred.weights_m(c) - 0.12)
    rng = np.random.default_rng(0)
    draw = lambda: [int(rng.choice(channel_grid(w, 4)[len(channel_grid(w, 4)) // 4:])) for w in widths]
    samples = [(widths, truth(widths))] + [(c, truth(c)) for c in (draw() for _ in range(15))]
    assert sum(pred.weights_m(c) > 0.12 for c, _ in samples) >= 4  # some calibration models stream, some do not
    fit = pred.calibrate(samples)
    assert fit["weight_floor_m"] == pytest.approx(0.12) and pred.weight_floor_m == pytest.approx(0.12)
    assert fit["weight_ms_per_million"] == pytest.approx(6.0, rel=0.1)
    assert set(fit["weight_floors_tried"]) == {"0", "0.04", "0.08", "0.12", "0.16"}
    every_weight = Predictor(pred.rows, plan, weight_layers=plan)
    monkeypatch.setattr(predictor_module, "WEIGHT_FLOORS_M", ())
    every_weight.calibrate(samples)
    assert every_weight.weight_floor_m == 0.0
    new = [draw() for _ in range(30)]
    err = lambda p: np.mean([abs(p.predict(c) - truth(c)) / truth(c) for c in new])
    assert err(pred) < 0.01 and err(pred) < 0.3 * err(every_weight)
    monkeypatch.setattr(predictor_module, "WEIGHT_FLOORS_M", (0.04, 0.08, 0.12, 0.16))
    linear = lambda c: 1.1 * pred.raw_ms(c) + 0.02 + 6.0 * pred.weights_m(c)
    fit = pred.calibrate([(c, linear(c)) for c, _ in samples])
    assert fit["weight_floor_m"] == 0.0 and fit["weight_ms_per_million"] == pytest.approx(6.0, rel=1e-6)
    assert pred.predict(new[0]) == pytest.approx(linear(new[0]))
    # one allocation measured five times: no floor can be scored, the offset alone is fitted
    fit = pred.calibrate([(widths, 1.0 + 0.01 * i) for i in range(5)])
    assert fit["weight_floor_m"] == 0.0 and fit["scale"] == 1.0
    assert fit["offset_ms"] == pytest.approx(1.02 - pred.raw_ms(widths))


def test_measured_correction_learns_what_the_table_misprices():
    """Constructed: the 'runtime' charges 30% of the baseline extra for every share of group 2 removed (a layout
    the table cannot see). With the calibration alone the line is used as is; once enough models are measured
    the correction is chosen by leave-one-out error and predicts new allocations far better."""
    graph = PruneGraph(build_model("resnet20", num_classes=10, in_channels=1).eval(), torch.zeros(1, 1, 28, 28))
    pred = _staircase_predictor(build_plan(graph))
    widths = [g.channels for g in graph.groups]
    base = pred.raw_ms(widths)
    truth = lambda c: 1.1 * pred.raw_ms(c) + 0.02 + 0.3 * base * (1 - c[2] / widths[2])
    rng = np.random.default_rng(0)
    draw = lambda: [int(rng.choice(channel_grid(w, 4)[len(channel_grid(w, 4)) // 3:])) for w in widths]
    samples = [(widths, truth(widths))] + [(c, truth(c)) for c in (draw() for _ in range(3))]
    fit = pred.calibrate(samples)
    assert fit["correction"] is None and pred.residual is None  # four models: the line only
    samples += [(c, truth(c)) for c in (draw() for _ in range(16))]
    line_only = Predictor(pred.rows, pred.layers)
    line_only.calibrate(samples[:4])
    fit = pred.calibrate(samples)
    assert fit["correction"] is not None and fit["correction"]["alpha"] is not None
    new = [draw() for _ in range(20)]
    err = lambda p: np.mean([abs(p.predict(c) - truth(c)) / truth(c) for c in new])
    assert err(pred) < 0.5 * err(line_only)
    assert int(np.argmax(np.abs(pred.residual))) == 2  # the mispriced group carries the correction


def test_resolution_correction_gives_each_map_size_its_own_scale():
    """Constructed: the 'runtime' runs the layers on the 7x7 maps 1.6x slower than their table rows say and the
    rest 0.9x (micro-models of small maps miss what a whole model pays there). No single scale fits; the
    per-resolution scales are chosen by leave-one-out error, recover the 7x7 and 14x14 factors, and predict new
    allocations far better than the line. A runtime the table prices well gets no correction."""
    graph = PruneGraph(build_model("resnet20", num_classes=10, in_channels=1).eval(), torch.zeros(1, 1, 28, 28))
    pred = _staircase_predictor(build_plan(graph))
    widths = [g.channels for g in graph.groups]
    assert pred.resolutions()[0] == (28, 28) and (7, 7) in pred.resolutions()

    def truth(c):
        ms = pred.layer_ms(c)
        return 0.02 + sum((1.6 if tuple(layer.sig.in_hw) == (7, 7) else 0.9) * t for layer, t in zip(pred.layers, ms))

    rng = np.random.default_rng(0)
    draw = lambda: [int(rng.choice(channel_grid(w, 4)[len(channel_grid(w, 4)) // 4:])) for w in widths]
    samples = [(widths, truth(widths))] + [(c, truth(c)) for c in (draw() for _ in range(11))]
    a, b = np.polyfit([pred.raw_ms(c) for c, _ in samples], [m for _, m in samples], 1)  # the line alone
    fit = pred.calibrate(samples)
    assert fit["correction"] is not None and fit["correction"]["features"] == "resolutions"
    # each resolution's implied scale (the line's plus its correction); 28x28 (the stem and stage 1, at most 16
    # channels) moves too little across the draws to pin its own apart from the offset
    scales = {hw: pred.scale + w for hw, w in zip(pred.resolutions(), pred.residual)}
    assert scales[(7, 7)] == pytest.approx(1.6, rel=0.1) and scales[(14, 14)] == pytest.approx(0.9, rel=0.1)
    new = [draw() for _ in range(30)]
    err = lambda f: np.mean([abs(f(c) - truth(c)) / truth(c) for c in new])
    assert err(pred.predict) < 0.4 * err(lambda c: a * pred.raw_ms(c) + b)
    plain = lambda c: 0.9 * pred.raw_ms(c) + 0.02
    fit = pred.calibrate([(c, plain(c)) for c, _ in samples])
    assert fit["correction"] is None and pred.residual is None
    assert pred.predict(new[0]) == pytest.approx(plain(new[0]))


def test_the_correction_brings_the_weight_term_the_line_alone_rejects():
    """Constructed: the 7x7 layers run at 0.4x their table rows and every million weights costs 6 ms (weights
    streamed from memory). Through the table's sum alone the weights do not pay (the 7x7 layers hold most of
    them, so the term and the cheap 7x7 maps cancel): the line rejects the term. Refitted with the resolution
    scales it is what the fit needs (ResNet-18 at 96 px on ncnn, session 30): the correction is chosen with the
    term, recovers both the weight price and the 7x7 scale, and predicts new allocations far better than the best
    fit that has no weight term to use."""
    graph = PruneGraph(build_model("resnet20", num_classes=10, in_channels=1).eval(), torch.zeros(1, 1, 28, 28))
    plan = build_plan(graph)
    rows = _staircase_predictor(plan).rows
    pred, no_weights = Predictor(rows, plan, weight_layers=plan), Predictor(rows, plan)
    widths = [g.channels for g in graph.groups]

    def truth(c):
        ms = pred.layer_ms(c)
        return 0.02 + sum((0.4 if tuple(layer.sig.in_hw) == (7, 7) else 1.0) * t for layer, t in zip(plan, ms)) \
            + 6.0 * pred.weights_m(c)

    rng = np.random.default_rng(0)
    draw = lambda: [int(rng.choice(channel_grid(w, 4)[len(channel_grid(w, 4)) // 4:])) for w in widths]
    samples = [(widths, truth(widths))] + [(c, truth(c)) for c in (draw() for _ in range(11))]
    fit = pred.calibrate(samples)
    tried = fit["correction"]["tried"]
    assert fit["correction"]["features"] == "resolutions" and tried["resolutions, weight term on"] < tried["resolutions"]
    assert fit["weight_ms_per_million"] == pytest.approx(6.0, rel=0.1)
    scales = {hw: pred.scale + w for hw, w in zip(pred.resolutions(), pred.residual)}
    assert scales[(7, 7)] == pytest.approx(0.4, rel=0.15) and scales[(14, 14)] == pytest.approx(1.0, rel=0.1)
    no_weights.calibrate(samples)
    new = [draw() for _ in range(30)]
    err = lambda p: np.mean([abs(p.predict(c) - truth(c)) / truth(c) for c in new])
    assert err(pred) < 0.7 * err(no_weights)
