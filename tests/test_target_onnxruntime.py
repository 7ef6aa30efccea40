"""The ONNX Runtime target against the real onnxruntime (no mocks).

Invariant checked: an artifact exists only if ORT opened it and its graph has the
requested precision; fp32 matches the PyTorch model, int8 is symmetric
per-channel Q/DQ that ORT runs with integer kernels and that agrees with fp32;
every refused request (fp16, too little calibration, a corrupt model) leaves
nothing behind.
"""
from __future__ import annotations

import functools
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from edgeprune.errors import UnsupportedPrecision, UserInputError
from edgeprune.measure.parity import run_batched
from edgeprune.targets import base

ort_target = pytest.importorskip("edgeprune.targets.onnxruntime")
pytestmark = pytest.mark.skipif(not ort_target.available()[0], reason="onnxruntime is not installed")

MINI_FMNIST = Path(__file__).parent / "data" / "fashion-mnist-mini"
PROFILE = {"name": "onnxruntime", "runtime": "onnxruntime", "options": {"graph_optimization_level": "all"}}
TENSORRT_FORM = {**PROFILE, "options": {**PROFILE["options"], "int8_form": "tensorrt"}}


def _leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}.partial-")]


def _fmnist_images(split: str) -> np.ndarray:
    data = gzip.decompress((MINI_FMNIST / f"{split}-images-idx3-ubyte.gz").read_bytes())
    count, rows, cols = struct.unpack(">3I", data[4:16])
    images = np.frombuffer(data, np.uint8, offset=16).reshape(count, 1, rows, cols)
    return (images.astype(np.float32) / 127.5 - 1.0).astype(np.float32)


def _calibration_and_held_out() -> tuple[np.ndarray, np.ndarray]:
    """Real Fashion-MNIST images (600 calibration, 300 held out), or seeded noise drawn the same way for both."""
    if (MINI_FMNIST / "train-images-idx3-ubyte.gz").is_file():
        return _fmnist_images("train"), _fmnist_images("t10k")
    rng = np.random.default_rng(1)
    return rng.standard_normal((600, 1, 28, 28)).astype(np.float32), \
        rng.standard_normal((300, 1, 28, 28)).astype(np.float32)


@pytest.fixture
def fp32_artifact(tiny_onnx, tmp_path):
    return ort_target.compile(tiny_onnx, "fp32", None, PROFILE, tmp_path / "fp32")


def test_fp32_matches_torch_and_manifest_is_complete(fp32_artifact, tiny_model, random_inputs, tiny_onnx):
    import torch

    art = base.Artifact.open(fp32_artifact.path)
    assert art.runtime == "onnxruntime" and art.precision == "fp32" and art.input_shape == [1, 1, 28, 28]
    assert art.file("model").name == "model.onnx"
    assert art.file("model").read_bytes() == tiny_onnx.read_bytes()
    entry = art.manifest["files"]["model"]
    assert entry["bytes"] > 0 and base.sha256_file(art.file("model")) == entry["sha256"]
    assert art.manifest["source_onnx_sha256"] == base.sha256_file(tiny_onnx)
    assert art.manifest["versions"] == ort_target.versions()
    assert art.manifest["options"]["graph_optimization_level"] == "all"

    with torch.no_grad():
        expected = tiny_model(torch.from_numpy(random_inputs)).numpy()
    got = run_batched(ort_target.load(art, threads=1), random_inputs, 1)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)

    report = ort_target.inspect(art)
    assert report["precision"] == "fp32" and report["qdq_nodes"] == 0
    assert report["quantized_ops"] == 0 and report["float_ops"] == 4  # three convs and the linear layer
    assert report["executed"]["int8"] == 0 and report["executed"]["fp32"] == 4


def test_load_applies_threads_and_the_profiles_optimization_level(tiny_onnx, tmp_path, random_inputs):
    import onnxruntime as ort

    art = ort_target.compile(tiny_onnx, "fp32", None, {"options": {"graph_optimization_level": "basic"}},
                             tmp_path / "basic")
    assert art.manifest["options"]["graph_optimization_level"] == "basic"
    runner = ort_target.load(art.path, threads=2)
    opts = runner.session.get_session_options()
    assert opts.intra_op_num_threads == 2 and opts.inter_op_num_threads == 1
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert runner.session.get_providers() == ["CPUExecutionProvider"]
    default = ort_target.load(ort_target.compile(tiny_onnx, "fp32", None, {}, tmp_path / "default"), threads=1)
    assert default.session.get_session_options().graph_optimization_level == \
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    np.testing.assert_allclose(runner.run(random_inputs[:1])[0], default.run(random_inputs[:1])[0], atol=1e-5)
    unfused = ort_target.load(art.path, threads=1, level="disable")  # the caller's level over the artifact's
    assert unfused.session.get_session_options().graph_optimization_level == \
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    with pytest.raises(UserInputError, match="optimisation level"):
        ort_target.load(art.path, threads=1, level="fast")


def test_runner_rejects_wrong_batch(fp32_artifact, random_inputs):
    runner = ort_target.load(fp32_artifact, threads=1)
    with pytest.raises(UserInputError, match=r"batch 4 vs 1") as info:
        runner.run(random_inputs[:4])
    assert "\n" not in str(info.value)
    with pytest.raises(UserInputError, match="does not match"):
        runner.run(random_inputs[0])
    assert runner.run(random_inputs[:1])[0].shape == (1, 10)


def test_int8_is_symmetric_per_channel_qdq_and_agrees_with_fp32(tiny_onnx, tmp_path, fp32_artifact):
    import onnx
    from onnx import numpy_helper

    from edgeprune.targets import qdq

    calib, held_out = _calibration_and_held_out()
    art = ort_target.compile(tiny_onnx, "int8", calib, TENSORRT_FORM, tmp_path / "int8")
    assert art.precision == "int8" and art.manifest["options"]["int8_form"] == "tensorrt"
    stats = art.manifest["options"]["qdq"]
    assert stats["calibration"] == "minmax" and stats["samples"] == len(calib) and stats["float_ops"] == 0

    report = ort_target.inspect(art)
    assert report["precision"] == "int8" and report["quantized_ops"] == 4 and report["float_ops"] == 0
    assert report["qdq_nodes"] > 0 and report["executed"]["int8"] >= 3  # ORT fused the convs to QLinearConv
    assert qdq.check_qdq_tensorrt_compatible(art.file("model")) == []

    graph = onnx.load(str(art.file("model"))).graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = consts[node.input[2]]
            assert zp.dtype == np.int8 and not zp.any(), node.name
    producer = {o: n for n in graph.node for o in n.output}
    for node in (n for n in graph.node if n.op_type in ("Conv", "Gemm")):
        dq = producer[node.input[1]]
        weight, scale = consts[dq.input[0]], consts[dq.input[1]]
        assert dq.op_type == "DequantizeLinear" and weight.dtype == np.int8
        assert scale.shape == (weight.shape[0],) and len(set(scale.tolist())) > 1  # one scale per out channel

    # What the artifact computes (its Q/DQ as written, run op by op: TensorRT's int8 accumulates in int32) is held
    # to tight bounds. ONNX Runtime's fused int8 kernels are held to top-1 agreement alone: on an x86 CPU without
    # VNNI they multiply u8 x s8 pairs into int16 (VPMADDUBSW), which may saturate (ONNX Runtime's quantization
    # guide); on a 2-core AMD EPYC with AVX2 only their largest logit error was 22% of the logits' range.
    out_fp32 = run_batched(ort_target.load(fp32_artifact, 1), held_out, 1)
    out_qdq = run_batched(ort_target.load(art, 1, level="disable"), held_out, 1)
    logit_range = out_fp32.max() - out_fp32.min()
    assert (out_qdq.argmax(1) == out_fp32.argmax(1)).mean() >= 0.8
    assert np.abs(out_qdq - out_fp32).max() <= 0.1 * logit_range
    assert np.abs(out_qdq - out_fp32).mean() <= 0.02 * logit_range
    assert not np.array_equal(out_qdq, out_fp32)
    out_int8 = run_batched(ort_target.load(art, 1), held_out, 1)
    assert (out_int8.argmax(1) == out_fp32.argmax(1)).mean() >= 0.8
    assert not np.array_equal(out_int8, out_fp32)


def test_default_int8_is_the_cpu_form_with_every_conv_fused(tiny_onnx, tmp_path, fp32_artifact):
    """uint8 activations with zero points, ReLUs folded: ORT runs every conv and the linear layer as int8 kernels."""
    import onnx
    from onnx import numpy_helper

    calib, held_out = _calibration_and_held_out()
    art = ort_target.compile(tiny_onnx, "int8", calib, PROFILE, tmp_path / "int8")
    assert art.manifest["options"]["int8_form"] == "cpu"
    assert art.manifest["options"]["qdq"]["activations"] == "uint8 asymmetric"
    report = ort_target.inspect(art)
    assert report["precision"] == "int8" and report["executed"]["fp32"] == 0 and report["executed"]["int8"] >= 4
    graph = onnx.load(str(art.file("model"))).graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    zero_points = [consts[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear"]
    assert zero_points and all(zp.dtype == np.uint8 for zp in zero_points)
    out_int8 = run_batched(ort_target.load(art, 1), held_out, 1)
    out_fp32 = run_batched(ort_target.load(fp32_artifact, 1), held_out, 1)
    assert (out_int8.argmax(1) == out_fp32.argmax(1)).mean() >= 0.8
    assert np.abs(out_int8 - out_fp32).max() <= 0.1 * (out_fp32.max() - out_fp32.min())
    with pytest.raises(UserInputError, match="int8_form"):
        ort_target.compile(tiny_onnx, "int8", calib, {"options": {"int8_form": "fast"}}, tmp_path / "x")


def test_reduce_range_follows_the_cpu_and_the_profile():
    """7-bit weights on x86 without VNNI (ONNX Runtime's u8 x s8 kernels saturate there), 8 bits with VNNI or AMX
    and off x86; the profile's int8_reduce_range overrides the detection."""
    decide = ort_target.int8_reduce_range
    assert decide(PROFILE, "x86_64", frozenset({"avx2", "fma"}))[0] is True
    assert "without VNNI" in decide(PROFILE, "x86_64", frozenset({"avx2", "fma"}))[1]
    assert decide(PROFILE, "x86_64", frozenset({"avx2", "avx512f", "avx512_vnni"}))[0] is False
    assert decide(PROFILE, "AMD64", frozenset({"avx2", "avx_vnni"}))[0] is False
    assert decide(PROFILE, "aarch64", frozenset({"asimd"}))[0] is False
    forced = {"options": {"int8_reduce_range": False}}
    assert decide(forced, "x86_64", frozenset({"avx2"})) == (False, "set by the target profile (int8_reduce_range: false)")
    assert decide({"options": {"int8_reduce_range": True}}, "aarch64", frozenset())[0] is True
    assert decide({"options": {"int8_reduce_range": "False"}}, "x86_64", frozenset())[0] is False  # quoted in TOML
    with pytest.raises(UserInputError, match="int8_reduce_range"):
        decide({"options": {"int8_reduce_range": "maybe"}}, "x86_64", frozenset())
    from edgeprune.measure.env import cpu_flags

    flags = cpu_flags()  # this host's, read for real where /proc/cpuinfo exists
    assert flags is None or len(flags) > 0


@pytest.mark.parametrize("reduce", [True, False])
def test_reduce_range_puts_the_cpu_forms_weights_on_7_bits(tiny_onnx, tmp_path, fp32_artifact, reduce):
    """The profile's choice reaches the quantizer: every weight within [-64, 64] with reduce_range, the full int8
    range without; recorded in the manifest, and the model still agrees with fp32 either way."""
    import onnx
    from onnx import numpy_helper

    calib, held_out = _calibration_and_held_out()
    profile = {**PROFILE, "options": {**PROFILE["options"], "int8_reduce_range": reduce}}
    art = ort_target.compile(tiny_onnx, "int8", calib, profile, tmp_path / "int8")
    assert art.manifest["options"]["int8_reduce_range"]["on"] is reduce
    assert ("7-bit" in art.manifest["options"]["qdq"]["weights"]) is reduce
    graph = onnx.load(str(art.file("model"))).graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    weights = [consts[n.input[0]] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in consts
               and consts[n.input[0]].dtype == np.int8 and consts[n.input[0]].ndim > 1]
    peak = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
    assert (peak <= 64) if reduce else (peak == 127)
    out_int8 = run_batched(ort_target.load(art, 1), held_out, 1)
    out_fp32 = run_batched(ort_target.load(fp32_artifact, 1), held_out, 1)
    assert (out_int8.argmax(1) == out_fp32.argmax(1)).mean() >= 0.8


def test_int8_request_that_leaves_float_ops_is_refused(tiny_onnx, tmp_path, monkeypatch):
    from edgeprune.targets import qdq

    # The real quantizer restricted to Conv leaves the Gemm float: the graph is "mixed", not int8.
    monkeypatch.setattr(qdq, "quantize_qdq", functools.partial(qdq.quantize_qdq, op_types=("Conv",)))
    calib, _ = _calibration_and_held_out()
    with pytest.raises(UnsupportedPrecision, match=r"int8 request produced a mixed graph \(3 quantized, 1 float"):
        ort_target.compile(tiny_onnx, "int8", calib[:64], PROFILE, tmp_path / "int8")
    assert _leftovers(tmp_path, "int8") == []


def test_fp16_is_refused_without_leftovers(tiny_onnx, tmp_path):
    with pytest.raises(UnsupportedPrecision) as info:
        ort_target.compile(tiny_onnx, "fp16", None, PROFILE, tmp_path / "fp16")
    assert str(info.value) == "ONNX Runtime CPU has no fp16 kernels for this target; use fp32 or int8"
    assert _leftovers(tmp_path, "fp16") == []


def test_bad_requests_are_user_errors(tiny_onnx, tmp_path):
    with pytest.raises(UserInputError, match="graph_optimization_level"):
        ort_target.compile(tiny_onnx, "fp32", None, {"options": {"graph_optimization_level": "max"}}, tmp_path / "a")
    assert _leftovers(tmp_path, "a") == []


@pytest.mark.parametrize("level", ["disable", "basic"])
def test_int8_is_refused_where_ort_would_run_it_in_fp32(tiny_onnx, tmp_path, level):
    calib, _ = _calibration_and_held_out()
    with pytest.raises(UnsupportedPrecision, match=rf"level '{level}' runs the Q/DQ graph with fp32 arithmetic"):
        ort_target.compile(tiny_onnx, "int8", calib[:64], {"options": {"graph_optimization_level": level}},
                           tmp_path / "int8")
    assert _leftovers(tmp_path, "int8") == []
