"""The TensorRT target.

Everywhere (no TensorRT, no GPU needed): importing the target stays light; availability
says what to install; every bad request is refused before TensorRT is needed and leaves
nothing behind; the ONNX each precision is built from is real and checked with ONNX
Runtime (fp16: half initializers, float32 I/O, outputs close to fp32; int8: Q/DQ that
passes the TensorRT checker); the builder configuration and the engine-inspector parser
are pure functions, checked on the real profiles and on inspector JSON written here in
the format TensorRT documents.

Only where TensorRT >= 10 and an NVIDIA GPU exist (``pytest -m tensorrt``): build
engines from the tiny CNN at fp32/fp16/int8, inspect them, run them and compare with
PyTorch; a parser failure names the ONNX node.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from edgeprune.errors import CompileError, RuntimeUnavailable, UnsupportedPrecision, UserInputError
from edgeprune.profiles import load_profile
from edgeprune.targets import get_runtime, qdq, require_runtime
from edgeprune.targets import tensorrt as trt_target
from edgeprune.targets import tensorrt_build as build
from edgeprune.targets import tensorrt_inspect as insp
from edgeprune.targets import tensorrt_runner as runner_mod

MINI_FMNIST = Path(__file__).parent / "data" / "fashion-mnist-mini"
PROFILES = ("jetson-orin", "jetson-orin-nano", "jetson-xavier", "nvidia-gpu")
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def _has_cuda_binding() -> bool:
    return trt_target._cuda_binding_installed()


def _leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}.partial-")]


def _images(count: int, seed: int) -> np.ndarray:
    """Real Fashion-MNIST images scaled to [-1, 1] when the mini set is present, else seeded noise."""
    path = MINI_FMNIST / "train-images-idx3-ubyte.gz"
    if path.is_file():
        data = gzip.decompress(path.read_bytes())
        n, rows, cols = struct.unpack(">3I", data[4:16])
        images = np.frombuffer(data, np.uint8, offset=16).reshape(n, 1, rows, cols)
        start = (seed * count) % max(n - count, 1)
        return (images[start:start + count].astype(np.float32) / 127.5 - 1.0).astype(np.float32)
    return np.random.default_rng(seed).standard_normal((count, 1, 28, 28)).astype(np.float32)


def _ort_outputs(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


def _is_topologically_sorted(graph) -> bool:
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    for node in graph.node:
        if any(name not in known for name in node.input):
            return False
        known.update(node.output)
    return True


# ---------------------------------------------------------------- import, availability, request checks

def test_import_needs_neither_torch_nor_tensorrt_nor_cuda():
    code = ("import sys; import edgeprune.targets.tensorrt, edgeprune.targets.tensorrt_build, "
            "edgeprune.targets.tensorrt_inspect, edgeprune.targets.tensorrt_runner; "
            "bad = [m for m in ('torch', 'tensorrt', 'cuda', 'pycuda', 'onnxruntime') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert get_runtime("tensorrt") is trt_target
    assert trt_target.PRECISIONS == ("fp32", "fp16", "int8")


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_unavailable_here_says_what_to_install():
    ok, reason = trt_target.available()
    assert not ok
    assert "JetPack 6" in reason and "tensorrt wheels" in reason
    with pytest.raises(RuntimeUnavailable, match="JetPack 6"):
        require_runtime("tensorrt")
    assert "tensorrt" not in trt_target.versions()


def test_version_check_requires_strongly_typed_tensorrt():
    problem = trt_target.version_problem("8.5.2.2")
    assert problem is not None and "TensorRT >= 10" in problem and "Xavier" in problem
    assert trt_target.version_problem("10.3.0") is None
    assert trt_target.version_problem("11.0.1.5") is None
    assert "cannot read" in trt_target.version_problem("unknown")


def test_compile_refuses_bad_requests_before_tensorrt(tiny_onnx, tmp_path):
    nano = load_profile("jetson-orin-nano")
    out = tmp_path / "engine"
    with pytest.raises(UserInputError, match="unknown precision"):
        trt_target.compile(tiny_onnx, "fp8", None, nano, out)
    with pytest.raises(UnsupportedPrecision, match="does not offer bf16"):
        trt_target.compile(tiny_onnx, "bf16", None, nano, out)
    with pytest.raises(UserInputError, match="does not exist"):
        trt_target.compile(tmp_path / "missing.onnx", "fp32", None, nano, out)
    with pytest.raises(UserInputError, match="at least 32 calibration samples, got 8"):
        trt_target.compile(tiny_onnx, "int8", _images(8, 0), nano, out)
    with pytest.raises(UserInputError, match="calibration data has shape"):
        trt_target.compile(tiny_onnx, "int8", np.zeros((40, 3, 28, 28), np.float32), nano, out)
    with pytest.raises(UserInputError, match="workspace_mb"):
        trt_target.compile(tiny_onnx, "fp16", None, {"options": {"workspace_mb": 0}}, out)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(tiny_onnx.read_bytes()[:200])
    with pytest.raises(UserInputError, match="not a readable ONNX model"):
        trt_target.compile(corrupt, "fp32", None, nano, out)
    assert _leftovers(tmp_path, "engine") == []


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_compile_without_tensorrt_is_runtime_unavailable_and_leaves_nothing(tiny_onnx, tmp_path):
    with pytest.raises(RuntimeUnavailable, match="JetPack 6"):
        trt_target.compile(tiny_onnx, "fp16", None, load_profile("jetson-orin"), tmp_path / "engine")
    assert _leftovers(tmp_path, "engine") == []


def test_load_and_inspect_refuse_another_runtimes_artifact(tiny_onnx, tmp_path):
    ort_target = pytest.importorskip("edgeprune.targets.onnxruntime")
    art = ort_target.compile(tiny_onnx, "fp32", None, {"options": {}}, tmp_path / "ort")
    with pytest.raises(UserInputError, match="not a tensorrt one"):
        trt_target.load(art, 1)
    with pytest.raises(UserInputError, match="not a tensorrt one"):
        trt_target.inspect(art.path)


@pytest.mark.skipif(_has_cuda_binding(), reason="a CUDA Python binding is installed here")
def test_runner_without_cuda_binding_says_what_to_install():
    with pytest.raises(RuntimeUnavailable, match="cuda-python"):
        runner_mod.open_cuda(0)


# ---------------------------------------------------------------- profiles and builder configuration

@pytest.mark.parametrize("name", PROFILES)
def test_profiles_give_a_strongly_typed_detailed_build(name):
    profile = load_profile(name)
    assert profile["runtime"] == "tensorrt" and profile["default_precision"] in profile["precisions"]
    assert profile["channel_multiple"] == 8 and profile["int8_channel_multiple"] == 32 and profile["threads"] == 1
    for precision in profile["precisions"]:
        settings = build.build_settings(profile, precision)
        assert settings.workspace_bytes == profile["options"]["workspace_mb"] * 1024 * 1024
        assert settings.builder_optimization_level == profile["options"]["builder_optimization_level"]
        assert settings.profiling_verbosity == "DETAILED"
        assert settings.strongly_typed and settings.static_shapes
        assert settings.precision_flags == () and settings.tf32 is False
        recorded = json.loads(json.dumps(settings.as_dict()))
        assert recorded["precision"] == precision and recorded["precision_flags"] == []


def test_jetson_workspaces_fit_their_shared_memory():
    nano = build.build_settings(load_profile("jetson-orin-nano"), "fp16")
    orin = build.build_settings(load_profile("jetson-orin"), "fp16")
    assert nano.workspace_bytes == 1 << 30
    assert nano.workspace_bytes < orin.workspace_bytes


def test_build_settings_defaults_and_invalid_options():
    default = build.build_settings(None, "fp32")
    assert default.workspace_bytes == build.DEFAULT_WORKSPACE_MB << 20
    assert default.builder_optimization_level == 3 and default.device == 0 and default.max_aux_streams is None
    assert build.build_settings({"options": {"max_aux_streams": 0, "tf32": True}}, "fp32").max_aux_streams == 0
    for bad in ({"builder_optimization_level": 6}, {"workspace_mb": "big"}, {"workspace_mb": True},
                {"tf32": "yes"}, {"device": -1}):
        with pytest.raises(UserInputError, match="in the target profile is invalid"):
            build.build_settings({"options": bad}, "fp16")


# ---------------------------------------------------------------- ONNX preparation, run with ONNX Runtime

def test_fp32_onnx_is_the_export_unchanged(tiny_onnx, tmp_path):
    stats = build.prepare_onnx(tiny_onnx, "fp32", None, tmp_path / "m.onnx", [1, 1, 28, 28])
    assert (tmp_path / "m.onnx").read_bytes() == tiny_onnx.read_bytes()
    assert stats["initializers"] == {"FLOAT": 8}


def test_fp16_onnx_has_half_weights_float_io_and_stays_close(tiny_onnx, tmp_path):
    import onnx
    from onnx import TensorProto

    out = tmp_path / "m16.onnx"
    stats = build.prepare_onnx(tiny_onnx, "fp16", None, out, [1, 1, 28, 28])
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert {TensorProto.DataType.Name(i.data_type) for i in model.graph.initializer} == {"FLOAT16"}
    assert stats["fp16"]["initializers"] == {"FLOAT16": 8} and stats["fp16"]["casts"] == 2
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [TensorProto.FLOAT]
    assert _is_topologically_sorted(model.graph)
    x = _images(16, 1)
    ref, half = _ort_outputs(tiny_onnx, x), _ort_outputs(out, x)
    err = np.abs(half - ref).max()
    assert 0 < err <= 1e-2 * np.abs(ref).max()  # rounded to half, yet close
    assert np.mean(half.argmax(1) == ref.argmax(1)) >= 0.9


def _sensitive_onnx(path: Path) -> Path:
    """conv -> log(sum(exp(.))) over space -> linear: Exp, ReduceSum and Log must stay fp32."""
    import torch
    from torch import nn

    class LogSumExpHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3, padding=1)
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            y = self.conv(x)
            return self.fc(torch.log(torch.exp(y).sum(dim=(2, 3))))

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(LogSumExpHead().eval(), (torch.zeros(1, 1, 28, 28),), str(path), dynamo=False,
                          opset_version=17, input_names=["input"], output_names=["output"])
    return path


def test_fp16_keeps_numerically_sensitive_ops_in_fp32(tmp_path):
    import onnx

    src = _sensitive_onnx(tmp_path / "lse.onnx")
    out = tmp_path / "lse16.onnx"
    stats = build.prepare_onnx(src, "fp16", None, out, [1, 1, 28, 28])["fp16"]
    assert {"Exp", "ReduceSum", "Log"} <= set(stats["kept_fp32_ops"])
    assert stats["initializers"].get("FLOAT16", 0) >= 2  # conv weight and bias
    model = onnx.load(str(out))
    assert _is_topologically_sorted(model.graph)
    x = _images(8, 2)
    ref, half = _ort_outputs(src, x), _ort_outputs(out, x)
    np.testing.assert_allclose(half, ref, rtol=2e-2, atol=2e-2 * np.abs(ref).max())


def test_int8_onnx_is_qdq_that_tensorrt_takes(tiny_onnx, tmp_path):
    out = tmp_path / "m8.onnx"
    stats = build.prepare_onnx(tiny_onnx, "int8", _images(64, 3), out, [1, 1, 28, 28])
    assert qdq.check_qdq_tensorrt_compatible(out) == []
    summary = qdq.summarize_graph(out)
    assert summary["precision"] == "int8" and summary["quantized_ops"] == 4  # 3 convs + the linear layer
    assert stats["qdq"]["weights"] == "int8 symmetric per-channel"
    x = _images(32, 4)
    assert np.mean(_ort_outputs(out, x).argmax(1) == _ort_outputs(tiny_onnx, x).argmax(1)) >= 0.8


def test_topological_sort_orders_a_shuffled_graph(tiny_onnx):
    import onnx

    model = onnx.load(str(tiny_onnx))
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(reversed(nodes))
    assert not _is_topologically_sorted(model.graph)
    build.topological_sort(model.graph)
    assert _is_topologically_sorted(model.graph)
    assert [n.name for n in model.graph.node] == [n.name for n in nodes]  # stable: the export order comes back


def test_parser_error_names_the_onnx_node(tiny_onnx):
    import onnx

    graph = onnx.load(str(tiny_onnx)).graph
    node = graph.node[3]
    message = build.parser_error_message([build.ParserIssue("Assertion failed: unsupported", node=3)], graph)
    assert repr(node.name) in message and f"({node.op_type})" in message and "unsupported" in message
    named = build.parser_error_message([build.ParserIssue("no importer", -1, "custom_1", "Mystery"),
                                        build.ParserIssue("second")], graph)
    assert "'custom_1' (Mystery)" in named and "+1 more" in named
    assert "without saying why" in build.parser_error_message([], graph)


# ---------------------------------------------------------------- engine-inspector JSON (TensorRT's documented format)

def _t(name: str, dims: list[int], fmt: str) -> dict:
    return {"Name": name, "Location": "Device", "Dimensions": dims, "Format/Datatype": fmt}


def _layer(name, ptype, ltype, inputs, outputs, weights=None, **extra) -> dict:
    layer = {"Name": name, "LayerType": ltype, "Inputs": inputs, "Outputs": outputs, "ParameterType": ptype,
             "TacticValue": "0x0000000000000001", **extra}
    if weights:
        layer["Weights"] = {"Type": weights, "Count": 144}
        layer["Bias"] = {"Type": "Float", "Count": 16}
    return layer


F32, F16_8 = "Row major linear FP32", "Channel major FP16 format where channel % 8 == 0"
I8_32 = "Thirty-two wide channel vectorized row major Int8 format"


def _engine(convs: list[tuple[str, str, str]], fc: tuple[str, str] = (F32, F32), head_cast: bool = False) -> str:
    """A 10.x DETAILED engine: optional input reformat, convs (input fmt, output fmt, weight type), pool, FC."""
    layers = []
    first = F32
    if head_cast:
        layers.append(_layer("input_cast", "Reformat", "Reformat", [_t("input", [1, 1, 28, 28], F32)],
                             [_t("input_cast_out", [1, 1, 28, 28], F16_8)]))
        first = F16_8
    for i, (fin, fout, wtype) in enumerate(convs):
        fin = first if i == 0 and head_cast else fin
        layers.append(_layer(f"/conv{i}/Conv + /Relu_{i}", "Convolution", "CaskConvolution",
                             [_t(f"t{i}", [1, 16, 28, 28], fin)], [_t(f"t{i + 1}", [1, 16, 28, 28], fout)], wtype,
                             Kernel=[3, 3], Activation="RELU", HasBias=1,
                             TacticName="sm87_xmma_fprop_implicit_gemm_f16f16_f16f16_f16_nhwckrsc_nhwc"))
    layers.append(_layer("/GlobalAveragePool", "Reduce", "CaskPooling", [_t("tp", [1, 16, 28, 28], convs[-1][1])],
                         [_t("pooled", [1, 16, 1, 1], convs[-1][1])]))
    layers.append(_layer("/fc/Gemm", "MatrixMultiply", "CaskGemmMatrixMultiply", [_t("pooled", [1, 16], fc[0])],
                         [_t("output", [1, 10], fc[1])]))
    return json.dumps({"Layers": layers, "Bindings": ["input", "output"]})


def test_inspector_fp16_engine():
    summary = insp.summarize_engine_json(_engine([(F16_8, F16_8, "Half")] * 3, fc=("Half", F32), head_cast=True))
    assert summary["detailed"] and summary["precision"] == "fp16"
    assert summary["conv"] == {"Half": 3} and summary["matmul"] == {"Half": 1}
    assert summary["by_output"]["Half"] == 5 and summary["io_tensors"] == ["input", "output"]
    assert insp.precision_problem("fp16", summary) is None
    assert "Int8" in insp.precision_problem("int8", summary)
    assert insp.precision_problem("fp32", summary) is not None


def test_inspector_fp16_request_that_ran_mostly_float_is_not_honoured():
    convs = [(F32, F32, "Float")] * 3 + [(F16_8, F16_8, "Half")]
    summary = insp.summarize_engine_json(_engine(convs))
    assert summary["conv"] == {"Float": 3, "Half": 1} and summary["precision"] == "mixed"
    assert "most convolutions" in insp.precision_problem("fp16", summary)


def test_inspector_int8_engine_and_int8_request_without_int8_convs():
    quantize = _layer("input_QuantizeLinear", "Scale", "Scale", [_t("input", [1, 1, 28, 28], F32)],
                      [_t("q", [1, 1, 28, 28], "Row major Int8 format")])
    convs = [(I8_32, I8_32, "Int8"), (I8_32, I8_32, "Int8"), ("Channel major INT8 format where channel % 16 == 0",
                                                                F32, "Int8")]
    info = json.loads(_engine(convs))
    info["Layers"].insert(0, quantize)
    summary = insp.summarize_engine_json(json.dumps(info))
    assert summary["precision"] == "int8" and summary["conv"] == {"Int8": 3} and summary["matmul"] == {"Float": 1}
    assert insp.precision_problem("int8", summary) is None
    plain = insp.summarize_engine_json(_engine([(F32, F32, "Float")] * 3))
    assert plain["precision"] == "fp32" and insp.precision_problem("fp32", plain) is None
    assert "no convolution runs in Int8" in insp.precision_problem("int8", plain)


def test_inspector_tensorrt11_schema():
    layer = {"Name": "/conv/Conv", "LayerType": "CaskConvolution", "ParameterType": "Convolution",
             "Inputs": [{"Name": "x", "Dimensions": [1, 8, 28, 28], "Format": "Channel major (kHWC8)",
                         "DataType": "Half"}],
             "Outputs": [{"Name": "y", "Dimensions": [1, 8, 28, 28], "Format": "Channel major (kHWC8)",
                          "DataType": "Half"}]}
    io = [{"Name": "input", "IOMode": "Input", "DataType": "Float", "Dimensions": [1, 1, 28, 28],
           "Location": "Device", "IsShapeInferenceIO": False,
           "ProfileInfo": [{"Format": "Row major linear FP32 format (kLINEAR)"}]},
          {"Name": "output", "IOMode": "Output", "DataType": "Float", "Dimensions": [1, 10], "Location": "Device"}]
    summary = insp.summarize_engine_json(json.dumps({"Layers": [layer], "I/O Tensors": io}))
    assert summary["precision"] == "fp16" and summary["io_tensors"] == ["input", "output"]


def test_inspector_without_detailed_profiling_claims_no_precision():
    names_only = json.dumps({"Layers": ["input_cast", "/conv0/Conv + /Relu_0", "/fc/Gemm"],
                             "Bindings": ["input", "output"]})
    summary = insp.summarize_engine_json(names_only)
    assert summary["detailed"] is False and summary["precision"] == "unknown" and "conv" not in summary
    assert summary["layers"] == 3 and summary["layer_names"][1] == "/conv0/Conv + /Relu_0"
    for requested in ("fp32", "fp16", "int8"):
        problem = insp.precision_problem(requested, summary)
        assert "rebuild it with profiling verbosity DETAILED" in problem
    assert insp.summarize_engine_json('{"Layers": [], "Bindings": []}')["precision"] == "unknown"
    with pytest.raises(ValueError, match="Layers"):
        insp.summarize_engine_json("[]")


@pytest.mark.parametrize("text, dtype", [
    ("Row major linear FP32", "Float"), ("Row major linear FP32 format (kLINEAR)", "Float"),
    ("Channel major FP16 format where channel % 8 == 0", "Half"),
    ("Two wide channel vectorized row major FP16 format", "Half"),
    ("Thirty-two wide channel vectorized row major Int8 format", "Int8"),
    ("Channel major INT8 format where channel % 16 == 0", "Int8"), ("Row major linear BFloat16 format", "BFloat16"),
    ("Row major linear UInt8 format", "UInt8"), ("Row major linear BOOL", "Bool"), ("Row major linear Int32", "Int32"),
    ("Half", "Half"), ("Float", "Float"), ("Unknown format", None),
])
def test_inspector_reads_every_format_description(text, dtype):
    assert insp.dtype_from_text(text) == dtype


def test_inspector_layer_kinds():
    assert insp.layer_kind({"ParameterType": "Convolution", "LayerType": "CaskConvolution"}) == "conv"
    assert insp.layer_kind({"LayerType": "CaskGemmConvolution"}) == "conv"
    assert insp.layer_kind({"ParameterType": "Deconvolution", "LayerType": "CaskDeconvolutionV2"}) == "conv"
    assert insp.layer_kind({"ParameterType": "MatrixMultiply", "LayerType": "CaskGemmMatrixMultiply"}) == "matmul"
    assert insp.layer_kind({"ParameterType": "Reformat", "LayerType": "Reformat"}) == "other"
    assert insp.layer_kind({"ParameterType": "Pooling", "LayerType": "CaskPooling"}) == "other"


# ---------------------------------------------------------------- device/engine checks that need no device

def test_engine_mismatch_names_what_differs():
    built = {"tensorrt": "10.3.0", "device": {"name": "Orin", "compute_capability": "8.7"}}
    assert trt_target.engine_mismatch(built, "10.3.0", {"name": "Orin", "compute_capability": "8.7"}) is None
    assert "10.3.0" in trt_target.engine_mismatch(built, "10.7.0", {"compute_capability": "8.7"})
    other = trt_target.engine_mismatch(built, "10.3.0", {"name": "NVIDIA L4", "compute_capability": "8.9"})
    assert "Orin" in other and "NVIDIA L4" in other and "8.9" in other


def test_runner_host_dtypes():
    assert runner_mod.numpy_dtype("HALF") == np.float16 and runner_mod.numpy_dtype("FLOAT") == np.float32
    assert runner_mod.numpy_dtype("int8") == np.int8
    assert runner_mod.enum_name("DataType.HALF") == "HALF"
    with pytest.raises(UserInputError, match="FP8"):
        runner_mod.numpy_dtype("FP8")


# ---------------------------------------------------------------- with TensorRT and an NVIDIA GPU

@pytest.fixture
def trt_ready():
    pytest.importorskip("tensorrt")
    ok, reason = trt_target.available()
    if not ok:
        pytest.skip(reason)


def _torch_logits(model, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_builds_inspects_and_runs(trt_ready, precision, tiny_model, tiny_onnx, tmp_path):
    profile = load_profile("nvidia-gpu")
    calib = _images(64, 5) if precision == "int8" else None
    try:
        art = trt_target.compile(tiny_onnx, precision, calib, profile, tmp_path / precision)
    except UnsupportedPrecision as exc:  # e.g. a GPU without int8 kernels: refused, never silently fp32
        assert not (tmp_path / precision).exists()
        pytest.skip(exc.one_line())
    assert set(art.manifest["files"]) == {"model"} and (art.path / "model.onnx").is_file()
    assert set(art.manifest["options"]["companions"]) == {"model.onnx", "layers.json"}
    assert art.manifest["options"]["build"]["strongly_typed"] and art.manifest["options"]["device"]["name"]
    report = trt_target.inspect(art)
    assert report["detailed"] and report["precision"] == precision
    x = _images(16, 6)
    runner = trt_target.load(art, 1)
    try:
        got = np.concatenate([runner.run(x[i:i + 1])[0] for i in range(len(x))])
        times = runner.device_latency_ms(iterations=20, warmup=5)
    finally:
        runner.close()
    ref = _torch_logits(tiny_model, x)
    if precision == "fp32":
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4)
    elif precision == "fp16":
        assert np.abs(got - ref).max() <= 1e-2 * np.abs(ref).max()
    else:
        assert np.mean(got.argmax(1) == ref.argmax(1)) >= 0.8
    assert len(times) == 20 and all(t > 0 for t in times)


@pytest.mark.tensorrt
def test_tensorrt_parser_error_names_the_node(trt_ready, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Mystery", ["input"], ["output"], name="mystery_node", domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    path = tmp_path / "mystery.onnx"
    onnx.save(model, str(path))
    with pytest.raises(CompileError, match="mystery_node"):
        trt_target.compile(path, "fp32", None, load_profile("nvidia-gpu"), tmp_path / "engine")
    assert _leftovers(tmp_path, "engine") == []
