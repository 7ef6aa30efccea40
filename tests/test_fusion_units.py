"""Fusion-aware latency table: the fusion test, fused units in the plan, identity subtraction, adaptive sampling."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune.measure import lut_rows
from edgeprune.measure.adaptive import propose
from edgeprune.measure.fusion import fuses
from edgeprune.measure.lut import LayerSig, SigTable, micro_onnx
from edgeprune.measure.settings import MeasureSettings
from edgeprune.models.mobilenet_v2 import InvertedResidual, conv_bn_relu6
from edgeprune.prune.graph import PruneGraph
from edgeprune.search.plan import build_plan
from edgeprune.search.units import candidates, decide, fused_plan, plan_with_units

EXAMPLE = torch.zeros(1, 3, 8, 8)


def _block_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(conv_bn_relu6(3, 8, stride=1), InvertedResidual(8, 8, 1, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


@pytest.fixture(scope="module")
def block_plan():
    model = _block_net()
    graph = PruneGraph(model, EXAMPLE)
    return model, graph, build_plan(graph)


def test_fusion_rule_with_given_numbers():
    assert fuses([1.0, 0.4], 1.1)           # saves 0.3 ms > 0.5 * 0.4
    assert not fuses([1.0, 0.4], 1.3)       # saves 0.1 ms < 0.2
    assert fuses([0.5, 0.2, 0.4], 0.95)     # a chain: saves 0.15 > 0.5 * 0.2
    with pytest.raises(ValueError):
        fuses([1.0], 0.5)


def _const_rows(plan, found, unit_ms: float) -> dict[str, SigTable]:
    rows = {}
    for layer in list(plan) + [c.unit for c in found]:
        ins = sorted({1, layer.in_c, 64})
        rows[layer.sig.key()] = SigTable(layer.sig, ins, [ins[-1]] if layer.sig.kind == "depthwise" else ins,
                                         [[unit_ms if layer.sig.kind == "unit" else 1.0] * (
                                             1 if layer.sig.kind == "depthwise" else len(ins))] * len(ins))
    return rows


@pytest.mark.parametrize("unit_ms, used", [(1.5, True), (2.9, False)])
def test_fused_unit_is_used_only_when_the_runtime_fuses(block_plan, unit_ms, used):
    model, graph, plan = block_plan
    found = candidates(model, plan)
    assert [len(c.members) for c in found] == [3] and found[0].unit.sig.residual  # expand+dw+project+add
    full = [g.channels for g in graph.groups]
    decisions = decide(plan, found, _const_rows(plan, found, unit_ms), full)
    assert decisions[0]["fused"] is used  # three layers of 1 ms each vs the unit's time
    names = [layer.name for layer in fused_plan(plan, decisions)]
    members = set(found[0].unit.members)
    if used:
        assert found[0].unit.name in names and not members & set(names)
    else:
        assert names == [layer.name for layer in plan]


def test_identity_subtraction(monkeypatch):
    sig = LayerSig("conv", (3, 3), (2, 2), (1, 1), (8, 8))
    seen, sunk = [], []

    def fake_points(profile, precision, settings, s, points, rounds, timeout_s, sink=False):
        seen.append(s)
        sunk.append(sink)
        if s.kind == "identity":  # I/O cost grows with both widths
            return {(i, o): 0.01 * i + 0.02 * o for i, o in points}
        return {(i, o): 1.0 + 0.01 * i + 0.02 * o + 0.001 * i * o for i, o in points}

    monkeypatch.setattr(lut_rows, "run_points", fake_points)
    monkeypatch.setattr(lut_rows, "_IDENTITY_MEMO", {})
    row = lut_rows.measure_row({}, "fp32", MeasureSettings.for_table(1), sig, [8, 16, 24, 32], [8, 16, 24, 32], 1, 10, 8)
    assert seen[-1] == LayerSig("identity", stride=(2, 2), in_hw=(8, 8), relu=False)
    assert row.lookup(16, 24) == pytest.approx(1.0 + 0.001 * 16 * 24)
    assert lut_rows.net_of(1.0, 2.0) == pytest.approx(lut_rows.NET_FLOOR)  # never below the floor
    assert not any(sunk)  # no runtime named: no sink
    sunk.clear()
    monkeypatch.setattr(lut_rows, "_IDENTITY_MEMO", {})
    lut_rows.measure_row({"runtime": "openvino"}, "fp32", MeasureSettings.for_table(1), sig, [8, 16], [8, 16], 1, 10, 8)
    assert sunk and all(sunk)  # on OpenVINO a 3x3 row and its identity are both measured with the sink


def test_identity_model_has_the_micro_models_shapes(tmp_path):
    import onnxruntime as ort

    unit = LayerSig("unit", in_hw=(9, 9), relu=False, steps=("conv-k1-s1-b-relu", "dw-k3-s2-relu"))
    a, b = 8, 24
    y = ort.InferenceSession(str(micro_onnx(unit, a, b, tmp_path / "u.onnx"))).run(
        None, {"x": np.ones((1, a, 9, 9), np.float32)})[0]
    isig = lut_rows.identity_sig(unit)
    for i, o in (lut_rows.io_widths(unit, a, b), (24, 8)):
        z = ort.InferenceSession(str(micro_onnx(isig, i, o, tmp_path / "i.onnx"))).run(
            None, {"x": np.ones((1, i, 9, 9), np.float32)})[0]
        assert z.shape == (1, max(i, o), *y.shape[2:])  # out < in keeps every input channel (see identity_onnx)
    assert y.shape == (1, b, 5, 5)


def test_adaptive_sampling_adds_points_where_interpolation_is_off():
    grid = list(range(8, 129, 8))
    outs = [8, 40, 72, 104, 128]
    smooth = [[0.1 * o for o in outs]]
    assert propose([64], outs, smooth, [64], grid) == ([], [])   # linear: nothing to add
    step = [[1.0, 1.0, 3.0, 3.0, 3.0]]                           # a cliff between 40 and 72
    new_ins, new_outs = propose([64], outs, step, [64], grid)
    assert new_ins == [] and new_outs and all(8 < o < 104 and o not in outs for o in new_outs)
    assert 56 in new_outs  # halfway into the gap where the jump is


def test_real_table_on_onnxruntime_uses_units_exactly_when_they_fuse(block_plan, tmp_path):
    from edgeprune.measure.lut_build import build_table
    from edgeprune.profiles import load_profile

    model, graph, plan = block_plan
    full = [g.channels for g in graph.groups]
    build = lambda req: build_table(load_profile("onnxruntime"), req, precision="fp32", threads=1, rounds=1,
                                    cache_dir=tmp_path, progress=False)
    fplan, table = plan_with_units(model, plan, full, build)
    (d,) = table["meta"]["fusion"]
    assert d["fused"] == fuses(d["parts_ms"], d["unit_ms"]) and all(v > 0 for v in d["parts_ms"] + [d["unit_ms"]])
    assert (d["unit"] in [la.name for la in fplan]) == d["fused"]
    assert len(fplan) == (len(plan) - 2 if d["fused"] else len(plan))


def test_new_table_modules_import_without_torch():
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; sys.modules['torch'] = None\n"
            "import edgeprune.measure.lut_rows, edgeprune.measure.fusion, edgeprune.measure.adaptive\n"
            "import edgeprune.measure.micro_units, edgeprune.measure.lut_build\n"
            "print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_an_adaptively_grown_row_is_read_back_from_the_cache(tmp_path):
    from edgeprune.measure.lut import RowCache

    sig = LayerSig("conv", (1, 1), (1, 1), (0, 0), (8, 8))
    grown = SigTable(sig, [8, 12, 16], [8, 16, 24, 32], [[1.0, 2.0, 3.0, 4.0]] * 3)  # planned: [8, 16] x [8, 24, 32]
    store = RowCache(tmp_path)
    store.put("k", grown)
    assert store.get("k", sig, [8, 16], [8, 24, 32]).ms == grown.ms and not store.warned


@pytest.mark.parametrize("runtime, net", [("openvino", True), ("ncnn", True), ("mnn", False)])
def test_rows_are_net_of_the_identity_except_on_raw_row_runtimes(monkeypatch, runtime, net):
    sig = LayerSig("conv", (3, 3), (1, 1), (1, 1), (8, 8))
    kinds = []

    def fake_points(profile, precision, settings, s, points, rounds, timeout_s, sink=False):
        kinds.append(s.kind)
        return {(i, o): (0.5 if s.kind == "identity" else 2.0) for i, o in points}

    monkeypatch.setattr(lut_rows, "run_points", fake_points)
    monkeypatch.setattr(lut_rows, "_IDENTITY_MEMO", {})
    row = lut_rows.measure_row({"name": "t", "runtime": runtime}, "fp32", MeasureSettings.for_table(1), sig,
                               [8, 16], [8, 16], 1, 10, 8, adaptive=False)
    assert row.lookup(8, 16) == pytest.approx(1.5 if net else 2.0)
    assert ("identity" in kinds) is net  # a raw-row runtime does not even measure the identity


def test_a_sink_ends_every_micro_model_alike_and_only_on_the_sink_runtimes(tmp_path):
    """With the sink, a conv, a fused unit and their identities all end in a global average pool of the map they
    would have returned (the pool's cost is netted out like the rest of the I/O); a linear layer keeps its output.
    The table uses it on ``SINK_RUNTIMES`` (OpenVINO) for dense convolutions with kernels over 1x1 only, and their
    rows get their own cache keys."""
    import onnx
    import onnxruntime as ort

    from edgeprune.measure import lut_build
    from edgeprune.measure.lut import SINK_RUNTIMES
    from edgeprune.profiles import load_profile

    conv = LayerSig("conv", (7, 7), (2, 2), (3, 3), (16, 16))
    unit = LayerSig("unit", in_hw=(9, 9), relu=False, steps=("conv-k1-s1-b-relu", "dw-k3-s2-relu"))
    cases = [(conv, 1, 24, (1, 24, 8, 8)), (unit, 8, 24, (1, 24, 5, 5)),
             (lut_rows.identity_sig(conv), 1, 24, (1, 24, 8, 8)), (lut_rows.identity_sig(unit), 8, 24, (1, 24, 5, 5))]
    for i, (sig, a, b, plain_shape) in enumerate(cases):
        x = np.random.default_rng(i).standard_normal((1, a, *sig.in_hw)).astype(np.float32)
        plain = ort.InferenceSession(str(micro_onnx(sig, a, b, tmp_path / f"p{i}.onnx"))).run(None, {"x": x})[0]
        path = micro_onnx(sig, a, b, tmp_path / f"s{i}.onnx", with_sink=True)
        sunk = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
        assert plain.shape == plain_shape and sunk.shape == (1, b, 1, 1), sig.kind
        assert np.allclose(sunk[0, :, 0, 0], plain[0].mean(axis=(1, 2)), atol=1e-5)  # the same map, pooled
        assert onnx.load(str(path)).graph.node[-1].op_type == "GlobalAveragePool"
    fc = LayerSig("linear", (1, 1), (1, 1), (0, 0), (1, 1))
    fc_nodes = onnx.load(str(micro_onnx(fc, 16, 10, tmp_path / "fc.onnx", with_sink=True))).graph.node
    assert "GlobalAveragePool" not in [n.op_type for n in fc_nodes]
    assert SINK_RUNTIMES == {"openvino"}
    from edgeprune.measure.lut import sinks

    assert sinks("openvino", conv) and not sinks("ncnn", conv) and not sinks("mnn", conv)
    one_by_one = LayerSig("conv", (1, 1), (1, 1), (0, 0), (16, 16))
    dw = LayerSig("depthwise", (3, 3), (1, 1), (1, 1), (16, 16))
    assert not any(sinks("openvino", s) for s in (one_by_one, dw, unit, fc))  # they keep the output's handling
    block = LayerSig("unit", in_hw=(9, 9), relu=True, residual=True, steps=("conv-k3-s1-b-relu", "conv-k3-s1-a"))
    assert sinks("openvino", block)  # a ResNet basic block is measured as its 3x3 parts are: their fusion test compares
    ov, ncnn = load_profile("x86"), load_profile("arm64")
    assert lut_build.table_context(ov, "fp32", 1)["entry"].endswith(lut_build.SINK_ENTRY)
    assert lut_build.table_context(ncnn, "fp32", 1)["entry"] == lut_build.ENTRY  # ncnn's cached rows stay valid
