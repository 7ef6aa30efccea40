"""The ncnn target against the real pnnx converter and the real ncnn runtime (no mocks).

Invariant checked: an fp32 artifact reproduces the PyTorch model; an fp16 artifact
holds fp16 weights and states its ncnn flags, and ``inspect``/``load`` say what this
host really does with them (on a CPU without ARM fp16: fp32 activations and
arithmetic, so ``load`` refuses unless emulation is allowed); a model pnnx or ncnn
cannot handle fails with a one-line CompileError and leaves no folder behind.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeprune.errors import CompileError, UnsupportedPrecision, UserInputError
from edgeprune.targets import base, get_runtime

ncnn_target = pytest.importorskip("edgeprune.targets.ncnn")
pytestmark = pytest.mark.skipif(not ncnn_target.available()[0], reason="ncnn or pnnx is not installed")

FP32_FLAGS = {"use_fp16_packed": False, "use_fp16_storage": False, "use_fp16_arithmetic": False,
              "use_bf16_storage": False, "use_bf16_packed": False, "lightmode": True}
FP16_FLAGS = {**FP32_FLAGS, "use_fp16_packed": True, "use_fp16_storage": True, "use_fp16_arithmetic": True}


def _leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}.partial-")]


def _torch_logits(model, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def _has_arm_fp16() -> bool:
    import ncnn

    return bool(ncnn.cpu_support_arm_asimdhp())


def _onnx_model(nodes, inits, in_shape, out_name="y", path: Path = None, ir_version: int | None = None) -> Path:
    """A hand-built ONNX model (opset 17; onnx's default IR version unless given)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, None)], inits)
    kwargs = {"ir_version": ir_version} if ir_version else {}
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], **kwargs)
    onnx.save(onnx.shape_inference.infer_shapes(model), str(path))
    return path


@pytest.fixture
def fp32_artifact(tiny_onnx, tmp_path):
    return ncnn_target.compile(tiny_onnx, "fp32", None, None, tmp_path / "fp32")


@pytest.fixture
def fp16_artifact(tiny_onnx, tmp_path):
    return ncnn_target.compile(tiny_onnx, "fp16", None, None, tmp_path / "fp16")


def test_import_is_torch_free_and_registered():
    code = ("import sys, edgeprune.targets.ncnn as t; ok, why = t.available(); v = t.versions(); "
            "print(ok, why, sorted(v), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "['ncnn',", "'pnnx']", "False"]
    assert get_runtime("ncnn") is ncnn_target
    assert ncnn_target.PRECISIONS == ("fp32", "fp16") and ncnn_target.NAME == "ncnn"


def test_fp32_artifact_files_manifest_and_hashes(fp32_artifact, tiny_onnx):
    art = base.Artifact.open(fp32_artifact.path)
    assert sorted(p.name for p in art.path.iterdir()) == ["manifest.json", "model.bin", "model.param"]
    m = art.manifest
    assert (m["runtime"], m["precision"], m["input_shape"]) == ("ncnn", "fp32", [1, 1, 28, 28])
    assert m["options"]["ncnn_options"] == FP32_FLAGS
    assert m["options"]["outputs"] == [{"name": "out0", "onnx_name": "output", "shape": [1, 10]}]
    assert m["options"]["converter"]["imports_torch"] is False  # the wheel's native pnnx binary
    assert "fp16=0" in m["options"]["converter"]["args"]
    for role, entry in m["files"].items():
        path = art.path / entry["name"]
        assert entry["sha256"] == base.sha256_file(path) and entry["bytes"] == path.stat().st_size, role
    assert m["source_onnx_sha256"] == base.sha256_file(tiny_onnx)
    assert set(m["versions"]) == {"ncnn", "pnnx"}
    assert art.file("model").read_text().split()[0] == "7767517"


def test_fp32_matches_torch_per_item_and_batched(fp32_artifact, tiny_model, random_inputs):
    ref = _torch_logits(tiny_model, random_inputs)
    runner = ncnn_target.load(fp32_artifact, 1)
    singles = np.concatenate([runner.run(random_inputs[i:i + 1])[0] for i in range(len(random_inputs))])
    batched = runner.run(random_inputs)
    assert len(batched) == 1 and batched[0].shape == (16, 10) and batched[0].dtype == np.float32
    assert np.array_equal(batched[0], singles)
    assert _rel(singles, ref) < 1e-4
    assert np.array_equal(singles.argmax(1), ref.argmax(1))


def test_fp32_inspect_is_fp32_everywhere(fp32_artifact):
    info = ncnn_target.inspect(fp32_artifact.path)
    assert (info["precision"], info["weights"], info["storage"], info["arithmetic"]) == ("fp32",) * 4
    assert info["fp16_emulated"] is False
    assert info["weight_blobs"]["complete"] and info["weight_blobs"]["tagged"] == {"fp32": 4}
    assert info["blob_bytes_per_element"] == {"4": 9}


def test_fp16_artifact_weights_flags_and_honest_inspect(fp16_artifact, fp32_artifact):
    m = fp16_artifact.manifest
    assert m["precision"] == "fp16" and m["options"]["ncnn_options"] == FP16_FLAGS
    assert "fp16=1" in m["options"]["converter"]["args"] and m["options"]["weights"] == "fp16"
    assert fp16_artifact.size_bytes() < 0.6 * fp32_artifact.size_bytes()
    info = ncnn_target.inspect(fp16_artifact)
    assert info["weights"] == "fp16"
    assert info["weight_blobs"]["tagged"] == {"fp16": 4} and info["weight_blobs"]["complete"]
    assert info["ncnn_options"] == FP16_FLAGS
    if _has_arm_fp16():
        assert info["precision"] == info["arithmetic"] == "fp16" and not info["fp16_emulated"]
    else:  # x86: ncnn keeps activations and arithmetic in fp32 even with every fp16 flag on
        assert info["precision"] == "fp32"  # fp16 is reported only where fp16 arithmetic really ran
        assert (info["storage"], info["arithmetic"]) == ("fp32", "fp32")
        assert info["fp16_emulated"] is True and info["differs_from_fp32_runtime"] is False


@pytest.mark.skipif(_has_arm_fp16(), reason="this CPU has ARM fp16 storage/arithmetic")
def test_fp16_load_refuses_emulation_unless_allowed(fp16_artifact, fp32_artifact, tiny_model, random_inputs):
    with pytest.raises(UnsupportedPrecision, match="fp32 activations and fp32 arithmetic"):
        ncnn_target.load(fp16_artifact, 1)
    fp16 = ncnn_target.load(fp16_artifact, 1, allow_emulated=True).run(random_inputs)[0]
    fp32 = ncnn_target.load(fp32_artifact, 1).run(random_inputs)[0]
    ref = _torch_logits(tiny_model, random_inputs)
    assert fp16.shape == (16, 10) and not np.array_equal(fp16, fp32)  # the weights really are rounded
    assert _rel(fp16, fp32) < 1e-2 and _rel(fp16, ref) < 1e-2
    assert (fp16.argmax(1) == fp32.argmax(1)).mean() >= 0.9


def test_unsupported_operator_is_named(tmp_path):
    from onnx import helper

    path = _onnx_model([helper.make_node("Det", ["x"], ["y"])], [], [1, 1, 4, 4], path=tmp_path / "det.onnx",
                       ir_version=8)
    with pytest.raises(CompileError) as err:
        ncnn_target.compile(path, "fp32", None, None, tmp_path / "out")
    assert "ncnn" in str(err.value) and "Det" in str(err.value) and "\n" not in str(err.value)
    assert _leftovers(tmp_path, "out") == []


def test_ir14_onnx_and_rank2_input_convert(tmp_path):
    """onnx 1.23 writes IR 14, which pnnx's onnxruntime rejects; the target hands pnnx IR 8. Rank-2 input."""
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal((12, 20)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(12).astype(np.float32), "b")]
    path = _onnx_model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)], inits, [1, 20],
                       path=tmp_path / "fc.onnx")
    art = ncnn_target.compile(path, "fp32", None, None, tmp_path / "fc")
    assert art.manifest["options"]["converter"]["onnx_ir_version"] == {"source": 14, "converted": 8}
    x = rng.standard_normal((5, 20)).astype(np.float32)
    got = ncnn_target.load(art, 1).run(x)[0]
    sess = ort.InferenceSession(str(path))
    want = np.concatenate([sess.run(None, {"x": x[i:i + 1]})[0] for i in range(5)])
    assert got.shape == (5, 12) and _rel(got, want) < 1e-5


def test_bad_requests(tiny_onnx, tiny_model, tmp_path):
    from tests.conftest import export_onnx

    with pytest.raises(UnsupportedPrecision, match="ncnn2int8"):
        ncnn_target.compile(tiny_onnx, "int8", None, None, tmp_path / "a")
    batch2 = export_onnx(tiny_model, (2, 1, 28, 28), tmp_path / "b2.onnx")
    with pytest.raises(UserInputError, match="batch size 1"):
        ncnn_target.compile(batch2, "fp32", None, None, tmp_path / "a")
    assert _leftovers(tmp_path, "a") == []


def test_runner_and_artifact_checks(fp32_artifact, tmp_path):
    runner = ncnn_target.load(fp32_artifact, 2)
    with pytest.raises(UserInputError, match="does not match"):
        runner.run(np.zeros((1, 3, 28, 28), np.float32))
    with pytest.raises(UserInputError, match="threads"):
        ncnn_target.load(fp32_artifact, -1)
    manifest = json.loads((fp32_artifact.path / "manifest.json").read_text())
    del manifest["options"]["ncnn_options"]["use_fp16_storage"]
    (fp32_artifact.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserInputError, match="ncnn runtime options"):
        ncnn_target.load(fp32_artifact.path, 1)


def test_weight_walk_detects_a_truncated_bin(fp16_artifact):
    from edgeprune.targets.ncnn_format import weight_storage

    data = fp16_artifact.file("weights").read_bytes()
    fp16_artifact.file("weights").write_bytes(data[:-8])
    walk = weight_storage(fp16_artifact.file("model"), fp16_artifact.file("weights"))
    assert walk["complete"] is False and "bytes" in walk["note"]
