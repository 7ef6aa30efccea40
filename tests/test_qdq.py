"""The shared Q/DQ quantizer and its TensorRT-compatibility checker, on real ONNX Runtime quantization.

Invariant checked: ``quantize_qdq`` writes symmetric int8 Q/DQ with per-channel
weights over every calibration sample, and ``check_qdq_tensorrt_compatible``
flags each way a Q/DQ graph can break that form (uint8 / asymmetric, per-tensor
weights, old opset, no Q/DQ at all).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from edgeprune.errors import UserInputError

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from edgeprune.targets import qdq  # noqa: E402


def _calib(n: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 28, 28)).astype(np.float32)


def _input_scale(path) -> float:
    """Scale of the QuantizeLinear that reads the graph input."""
    from onnx import numpy_helper

    model = onnx.load(str(path))
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == model.graph.input[0].name)
    return float(consts[q.input[1]])


def test_quantize_qdq_writes_symmetric_per_channel_int8(tiny_onnx, tmp_path):
    out = tmp_path / "q.onnx"
    stats = qdq.quantize_qdq(tiny_onnx, out, _calib())
    assert stats["format"] == "QDQ" and stats["calibration"] == "minmax"
    assert stats["samples"] == 64 and stats["batches"] == 64 and stats["opset"] >= 13
    assert stats["quantized_ops"] == 4 and stats["float_ops"] == 0 and stats["qdq_nodes"] > 8
    assert qdq.check_qdq_tensorrt_compatible(out) == []
    summary = qdq.summarize_graph(out)
    assert summary["precision"] == "int8" and summary["quantize_nodes"] > 0 and summary["dequantize_nodes"] > 0
    model = onnx.load(str(out))
    types = {i.name: i.data_type for i in model.graph.initializer}
    dq_inputs = [types.get(n.input[0]) for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert onnx.TensorProto.INT32 not in dq_inputs  # biases stay float for TensorRT
    assert onnx.TensorProto.INT8 in dq_inputs


@pytest.mark.parametrize("where", [0, -1])
def test_calibration_range_covers_every_sample(tiny_onnx, tmp_path, where):
    calib = np.clip(_calib(100, seed=3), -1.0, 1.0)
    calib[where, 0, 5, 5] = 6.35  # one outlier in the first or the last batch (MinMax merges in strides)
    out = tmp_path / "q.onnx"
    qdq.quantize_qdq(tiny_onnx, out, calib)
    assert _input_scale(out) == pytest.approx(6.35 / 127, rel=1e-5)


def test_percentile_calibration_clips_the_outlier_and_stays_compatible(tiny_onnx, tmp_path):
    calib = np.clip(_calib(64, seed=3), -1.0, 1.0)
    calib[0, 0, 5, 5] = 6.35
    out = tmp_path / "q.onnx"
    stats = qdq.quantize_qdq(tiny_onnx, out, calib, method="percentile", percentile=99.99)
    assert stats["calibration"] == "percentile" and stats["percentile"] == 99.99
    assert _input_scale(out) < 1.01 / 127  # one value in 50176 does not set the input range
    assert qdq.check_qdq_tensorrt_compatible(out) == []


def test_checker_flags_asymmetric_uint8_quantization(tiny_onnx, tmp_path):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader:
        def __init__(self):
            self._items = iter([{"input": x[None]} for x in _calib(8)])

        def get_next(self):
            return next(self._items, None)

    out = tmp_path / "asym.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(str(tiny_onnx), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, extra_options={"ActivationSymmetric": False})
    problems = qdq.check_qdq_tensorrt_compatible(out)
    assert problems and any("uint8 (asymmetric)" in p for p in problems)
    assert all("\n" not in p for p in problems)


def test_checker_flags_nonzero_int8_zero_point(tiny_onnx, tmp_path):
    from onnx import numpy_helper

    good = tmp_path / "q.onnx"
    qdq.quantize_qdq(tiny_onnx, good, _calib())
    model = onnx.load(str(good))
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    init = next(i for i in model.graph.initializer if i.name == q.input[2])
    init.CopyFrom(numpy_helper.from_array(np.array(3, np.int8), init.name))
    bad = tmp_path / "shifted.onnx"
    onnx.save(model, str(bad))
    assert any("nonzero zero point" in p for p in qdq.check_qdq_tensorrt_compatible(bad))


def test_checker_flags_per_tensor_weights(tiny_onnx, tmp_path):
    out = tmp_path / "per_tensor.onnx"
    stats = qdq.quantize_qdq(tiny_onnx, out, _calib(), per_channel=False)
    assert stats["weights"] == "int8 symmetric per-tensor"
    problems = qdq.check_qdq_tensorrt_compatible(out)
    assert len([p for p in problems if "is per-tensor" in p]) == 4  # three convs and the Gemm


def test_checker_flags_an_unquantized_graph_and_an_old_opset(tiny_onnx, tmp_path):
    assert any("no QuantizeLinear/DequantizeLinear" in p for p in qdq.check_qdq_tensorrt_compatible(tiny_onnx))
    out = tmp_path / "q.onnx"
    qdq.quantize_qdq(tiny_onnx, out, _calib())
    model = onnx.load(str(out))
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = 12
    old = tmp_path / "old.onnx"
    onnx.save(model, str(old))
    assert any("opset 12 < 13" in p for p in qdq.check_qdq_tensorrt_compatible(old))


def test_old_opset_input_is_raised_to_13(tiny_model, tmp_path):
    import torch

    src = tmp_path / "opset11.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(tiny_model, (torch.zeros(1, 1, 28, 28),), str(src), dynamo=False, opset_version=11,
                          input_names=["input"], output_names=["output"])
    out = tmp_path / "q.onnx"
    assert qdq.quantize_qdq(src, out, _calib())["opset"] >= 13
    assert qdq.check_qdq_tensorrt_compatible(out) == []


def test_summarize_graph_tells_fp32_mixed_and_int8_apart(tiny_onnx, tmp_path):
    assert qdq.summarize_graph(tiny_onnx)["precision"] == "fp32"
    out = tmp_path / "conv_only.onnx"
    qdq.quantize_qdq(tiny_onnx, out, _calib(), op_types=("Conv",))
    summary = qdq.summarize_graph(out)
    assert summary["precision"] == "mixed" and summary["quantized_ops"] == 3 and summary["float_ops"] == 1


def test_bad_calibration_requests_are_user_errors(tiny_onnx, tmp_path):
    with pytest.raises(UserInputError, match="unknown calibration method"):
        qdq.quantize_qdq(tiny_onnx, tmp_path / "q.onnx", _calib(), method="kl")
    with pytest.raises(UserInputError, match="make no full batch"):
        qdq.quantize_qdq(tiny_onnx, tmp_path / "q.onnx", _calib()[:0])


def test_a_quantizer_that_drops_relu_is_refused(tiny_onnx, tmp_path, monkeypatch):
    from edgeprune.errors import CompileError

    real = qdq._extra_options

    def asymmetric(*args):  # ORT removes ReLU only under asymmetric activations: provoke it for real
        return {**real(*args), "ActivationSymmetric": False, "QDQKeepRemovableActivations": False}

    monkeypatch.setattr(qdq, "_extra_options", asymmetric)
    with pytest.raises(CompileError, match=r"removed activations \{'Relu': 3\}"):
        qdq.quantize_qdq(tiny_onnx, tmp_path / "q.onnx", _calib(), op_types=("Conv", "Gemm", "Add", "Relu"))
