"""The OpenVINO target against the real OpenVINO runtime and NNCF (no mocks).

Invariant checked: an artifact exists only if the runtime really executes the
requested precision; fp32 matches the PyTorch model, int8 runs quantized kernels
and agrees with fp32 on top-1, fp16 on a CPU without native FP16 is refused and
leaves nothing behind.
"""
from __future__ import annotations

import gzip
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeprune.errors import RuntimeUnavailable, UnsupportedPrecision, UserInputError
from edgeprune.measure.parity import run_batched
from edgeprune.targets import base

ov_target = pytest.importorskip("edgeprune.targets.openvino")
pytestmark = pytest.mark.skipif(not ov_target.available()[0], reason="openvino is not installed")

MINI_FMNIST = Path(__file__).parent / "data" / "fashion-mnist-mini"
PROFILE = {"name": "x86", "runtime": "openvino", "options": {"device": "CPU", "performance_hint": "LATENCY"}}


def _leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}.partial-")]


def _fmnist_images(split: str, n: int) -> np.ndarray:
    """First ``n`` images of the mini Fashion-MNIST split as float32 NCHW in [-1, 1]."""
    data = gzip.decompress((MINI_FMNIST / f"{split}-images-idx3-ubyte.gz").read_bytes())
    count, rows, cols = struct.unpack(">3I", data[4:16])
    images = np.frombuffer(data, np.uint8, offset=16).reshape(count, 1, rows, cols)[:n]
    return (images.astype(np.float32) / 127.5 - 1.0).astype(np.float32)


def _calibration_and_held_out(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Real images (mini Fashion-MNIST) where the repository has them, otherwise seeded noise."""
    if (MINI_FMNIST / "train-images-idx3-ubyte.gz").is_file():
        return _fmnist_images("train", n), _fmnist_images("t10k", n)
    rng = np.random.default_rng(1)
    return tuple(rng.standard_normal((2, n, 1, 28, 28)).astype(np.float32))


@pytest.fixture
def fp32_artifact(tiny_onnx, tmp_path):
    return ov_target.compile(tiny_onnx, "fp32", None, PROFILE, tmp_path / "fp32")


def test_import_is_torch_free_and_reports_versions():
    code = ("import sys, edgeprune.targets.openvino as t; ok, _ = t.available(); v = t.versions(); "
            "caps = t.device_capabilities('CPU'); "
            "assert ok and 'openvino' in v and 'FP32' in caps['capabilities'], (v, caps); "
            "assert 'torch' not in sys.modules and 'nncf' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_fp32_matches_torch_and_manifest_is_complete(fp32_artifact, tiny_model, random_inputs, tiny_onnx):
    import torch

    art = base.Artifact.open(fp32_artifact.path)
    assert art.runtime == "openvino" and art.precision == "fp32" and art.input_shape == [1, 1, 28, 28]
    for role, entry in art.manifest["files"].items():
        assert entry["bytes"] > 0 and base.sha256_file(art.file(role)) == entry["sha256"], role
    assert art.size_bytes() > 0
    assert art.manifest["source_onnx_sha256"] == base.sha256_file(tiny_onnx)
    opts = art.manifest["options"]
    assert opts["inference_precision_hint"] == "f32" and opts["compress_to_fp16"] is False
    assert opts["device"] == "CPU" and opts["nncf"] is None

    with torch.no_grad():
        expected = tiny_model(torch.from_numpy(random_inputs)).numpy()
    got = run_batched(ov_target.load(art, threads=1), random_inputs, 1)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)

    report = ov_target.inspect(art)
    assert report["precision"] == "fp32" and report["inference_precision_hint"] == "f32"
    assert report["executed"].get("f32", 0) > 0 and not {"u8", "i8", "bf16", "f16"} & set(report["executed"])
    assert report["device"] == "CPU" and "FP32" in report["capabilities"]


def test_runner_rejects_wrong_batch_and_reuses_request(fp32_artifact, random_inputs):
    runner = ov_target.load(fp32_artifact, threads=1)
    with pytest.raises(UserInputError, match=r"batch 4 vs 1"):
        runner.run(random_inputs[:4])
    first = runner.run(random_inputs[:1])[0]
    kept = first.copy()
    second = runner.run(random_inputs[1:2])[0]
    np.testing.assert_array_equal(first, kept)  # the next call does not overwrite returned outputs
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(runner.run(random_inputs[:1])[0], kept)


def test_perf_count_times_the_executed_nodes_inside_the_model(fp32_artifact, random_inputs):
    plain = ov_target.load(fp32_artifact, threads=1)
    counted = ov_target.load(fp32_artifact, threads=1, perf_count=True)
    x = random_inputs[:1]
    np.testing.assert_array_equal(counted.run(x)[0], plain.run(x)[0])   # counting changes no result
    ops = counted.op_ms(x)
    assert ops and all(ms >= 0 for ms in ops.values())
    assert sum(ops.values()) > 0
    assert any("conv" in name.lower() for name in ops), sorted(ops)   # the model's convolutions are timed
    assert plain.op_ms(x) == {}   # no counters unless asked for


def test_int8_runs_quantized_kernels_and_agrees_with_fp32(tiny_onnx, tmp_path, fp32_artifact):
    calib, held_out = _calibration_and_held_out(64)
    art = ov_target.compile(tiny_onnx, "int8", calib, PROFILE, tmp_path / "int8")
    opts = art.manifest["options"]
    assert art.precision == "int8"
    assert opts["nncf"] == {"preset": "performance", "subset_size": 64, "calibration_samples": 64}

    report = ov_target.inspect(art)
    assert report["precision"] == "int8"
    assert report["kernels"].get("u8", 0) + report["kernels"].get("i8", 0) >= 3  # the three convolutions

    out_int8 = run_batched(ov_target.load(art, 1), held_out, 1)
    out_fp32 = run_batched(ov_target.load(fp32_artifact, 1), held_out, 1)
    assert (out_int8.argmax(1) == out_fp32.argmax(1)).mean() >= 0.9
    # The tiny untrained model favours one class on real images, so top-1 alone is a weak
    # signal: the logits themselves must stay close (int8 error, not a broken graph).
    assert np.abs(out_int8 - out_fp32).max() < 0.25 * np.abs(out_fp32).max()
    assert not np.array_equal(out_int8, out_fp32)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_runs_where_the_runtime_says_the_cpu_has_it(tiny_onnx, tmp_path, fp32_artifact, precision):
    """Decided by OPTIMIZATION_CAPABILITIES, not by a CPU name: where FP16/BF16 is listed, its kernels run."""
    flag = precision.upper()
    caps = ov_target.device_capabilities("CPU")
    if flag not in caps["capabilities"]:
        pytest.skip(f"{caps['name']} lists no {flag} (capabilities: {caps['capabilities']})")
    art = ov_target.compile(tiny_onnx, precision, None, PROFILE, tmp_path / precision)
    opts = art.manifest["options"]
    assert opts["inference_precision_hint"] == {"fp16": "f16", "bf16": "bf16"}[precision]
    assert opts["compress_to_fp16"] is (precision == "fp16")
    report = ov_target.inspect(art)
    assert report["precision"] == precision and report["kernels"].get(opts["inference_precision_hint"], 0) >= 3
    _, held_out = _calibration_and_held_out(64)
    out = run_batched(ov_target.load(art, 1), held_out, 1)
    ref = run_batched(ov_target.load(fp32_artifact, 1), held_out, 1)
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.95  # the parity gate's criterion (top-1 agreement)
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max() and not np.array_equal(out, ref)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_is_refused_on_a_cpu_without_it(tiny_onnx, tmp_path, monkeypatch, precision):
    real = ov_target.device_capabilities
    flag = precision.upper()

    def without(device="CPU", core=None):
        caps = real(device, core)
        return {**caps, "capabilities": [c for c in caps["capabilities"] if c != flag]}

    monkeypatch.setattr(ov_target, "device_capabilities", without)
    with pytest.raises(UnsupportedPrecision) as info:
        ov_target.compile(tiny_onnx, precision, None, PROFILE, tmp_path / precision)
    msg = str(info.value)
    assert f"has no native {flag}" in msg and "OPTIMIZATION_CAPABILITIES" in msg and "--precision fp32" in msg
    assert "\n" not in msg
    assert _leftovers(tmp_path, precision) == []


def test_bad_requests_are_user_errors(tiny_onnx, tmp_path):
    with pytest.raises(RuntimeUnavailable, match="NOPE"):
        ov_target.compile(tiny_onnx, "fp32", None, {"options": {"device": "NOPE"}}, tmp_path / "a")
    with pytest.raises(UserInputError, match="performance_hint"):
        ov_target.compile(tiny_onnx, "fp32", None, {"options": {"performance_hint": "FAST"}}, tmp_path / "a")
    assert _leftovers(tmp_path, "a") == []
