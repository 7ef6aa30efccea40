"""Every runtime target against the one ``targets.base.Target`` protocol, with the real runtimes (no mocks).

Invariant checked, per runtime installed here (the others are skipped with the reason
``available()`` gives): the module satisfies the Protocol (names and signatures); it imports
without torch and reports versions; an fp32 compile of the tiny CNN writes the manifest last
and lists every file with its hash; ``load`` + ``run`` agrees with ONNX Runtime on the same
ONNX; ``inspect`` reports fp32; and every refused request (unknown or unoffered precision,
missing/corrupt/custom-op ONNX, too little or misshapen calibration data, bad threads,
another runtime's artifact) is one line and leaves no output folder behind -- a failed
rebuild keeps the previous artifact. Runtime-specific behaviour stays in ``test_target_<name>.py``.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeprune.errors import EdgepruneError, UnsupportedPrecision, UserInputError
from edgeprune.targets import base, get_runtime, onnx_input
from tests.conftest import export_onnx, make_tiny_cnn

RUNTIMES = ("openvino", "onnxruntime", "ncnn", "mnn", "tensorrt")
PROFILE = {"name": "conformance", "options": {}}


def _leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}.partial-")]


def _one_line(exc: EdgepruneError) -> str:
    text = str(exc)
    assert "\n" not in text and text == exc.one_line(), text
    return text


@pytest.fixture(scope="module", params=RUNTIMES)
def target(request):
    mod = get_runtime(request.param)
    ok, why = mod.available()
    if not ok:
        pytest.skip(f"{request.param} is not available here: {why}")
    return mod


@pytest.fixture(scope="module")
def model_onnx(tmp_path_factory) -> Path:
    return export_onnx(make_tiny_cnn(), (1, 1, 28, 28), tmp_path_factory.mktemp("model") / "tiny.onnx")


@pytest.fixture(scope="module")
def fp32(target, model_onnx, tmp_path_factory) -> base.Artifact:
    return target.compile(model_onnx, "fp32", None, PROFILE, tmp_path_factory.mktemp(target.NAME) / "fp32")


@pytest.mark.parametrize("name", RUNTIMES)
def test_module_satisfies_the_protocol(name):
    mod = get_runtime(name)  # checked whether or not the runtime is installed: the module must import anyway
    assert isinstance(mod, base.Target)
    assert base.protocol_problems(mod) == []
    assert mod.NAME == name and "fp32" in mod.PRECISIONS


def test_protocol_problems_names_a_wrong_signature():
    import types

    fake = types.ModuleType("fake")
    fake.NAME, fake.EXTRA, fake.PRECISIONS = "fake", None, ("fp32", "fp64")
    fake.available = fake.versions = lambda: None
    fake.inspect = lambda artifact: None
    fake.compile = lambda onnx_path, precision, out_dir: None
    fake.load = lambda artifact, threads, mode: None
    problems = base.protocol_problems(fake)
    assert "PRECISIONS has unknown ['fp64']" in problems
    assert len(problems) == 3 and problems[1].startswith("compile(") and "'mode' has no default" in problems[2]


def test_available_versions_and_torch_free_import(target):
    code = (f"import sys, edgeprune.targets.{target.NAME} as t; ok, why = t.available(); v = t.versions(); "
            "assert ok, why; assert v and all(isinstance(x, str) and x for x in v.values()), v; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_fp32_manifest_is_written_last_and_complete(fp32, target, model_onnx):
    art = base.Artifact.open(fp32.path)
    assert (art.runtime, art.precision, art.input_shape) == (target.NAME, "fp32", [1, 1, 28, 28])
    assert art.manifest["source_onnx_sha256"] == base.sha256_file(model_onnx)
    assert art.manifest["versions"] == target.versions()
    for role, entry in art.manifest["files"].items():
        assert entry["bytes"] > 0 and entry["sha256"] == base.sha256_file(art.file(role)), role
    manifest_time = (art.path / base.MANIFEST).stat().st_mtime_ns
    assert all(p.stat().st_mtime_ns <= manifest_time for p in art.path.rglob("*") if p.is_file())


def test_fp32_load_run_matches_onnxruntime_and_inspect_says_fp32(fp32, target, model_onnx):
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32)
    session = ort.InferenceSession(str(model_onnx), providers=["CPUExecutionProvider"])
    expected = np.concatenate([session.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])
    runner = target.load(fp32, 1)
    got = np.concatenate([runner.run(x[i:i + 1])[0] for i in range(len(x))])
    assert got.shape == expected.shape == (8, 10)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * np.abs(expected).max())
    assert target.inspect(fp32)["precision"] == "fp32"


def test_unknown_and_unoffered_precisions_are_refused_without_a_folder(target, model_onnx, tmp_path):
    with pytest.raises(UserInputError, match="unknown precision 'int4'") as info:
        target.compile(model_onnx, "int4", None, PROFILE, tmp_path / "out")
    _one_line(info.value)
    for precision in (p for p in base.PRECISIONS if p not in target.PRECISIONS):
        with pytest.raises(UnsupportedPrecision, match=precision) as info:
            target.compile(model_onnx, precision, None, PROFILE, tmp_path / "out")
        _one_line(info.value)
    assert _leftovers(tmp_path, "out") == []


@pytest.mark.parametrize("content", [b"\x08\x07not an onnx model" * 8, b"garbage"], ids=["protobuf-ish", "garbage"])
def test_corrupt_onnx_is_refused_without_a_folder(target, tmp_path, content):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(content)
    with pytest.raises(UserInputError) as info:
        target.compile(bad, "fp32", None, PROFILE, tmp_path / "out")
    assert str(bad) in _one_line(info.value)
    assert _leftovers(tmp_path, "out") == []


def test_missing_and_custom_op_onnx_are_refused(target, tmp_path):
    from onnx import TensorProto, helper, save

    with pytest.raises(UserInputError, match="does not exist"):
        target.compile(tmp_path / "missing.onnx", "fp32", None, PROFILE, tmp_path / "out")
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["a"]), helper.make_node("FancyOp", ["a"], ["output"], domain="x.y")],
        "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, 4, 4])])
    custom = tmp_path / "custom.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("x.y", 1)]),
         str(custom))
    with pytest.raises(UserInputError, match=r"custom operator\(s\) FancyOp \(x\.y\)") as info:
        target.compile(custom, "fp32", None, PROFILE, tmp_path / "out")
    _one_line(info.value)
    assert _leftovers(tmp_path, "out") == []


def test_failed_rebuild_keeps_the_previous_artifact(fp32, target, tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(UserInputError):
        target.compile(bad, "fp32", None, PROFILE, fp32.path)
    assert json.loads((fp32.path / base.MANIFEST).read_text()) == fp32.manifest


@pytest.mark.parametrize("n", [0, 8, 31])
def test_int8_refuses_too_few_calibration_samples(target, model_onnx, tmp_path, n):
    if "int8" not in target.PRECISIONS:
        pytest.skip(f"{target.NAME} offers no int8")
    calib = None if n == 0 else np.zeros((n, 1, 28, 28), np.float32)
    with pytest.raises(UserInputError, match=rf"at least 32 calibration samples, got {n}"):
        target.compile(model_onnx, "int8", calib, PROFILE, tmp_path / "int8")
    assert _leftovers(tmp_path, "int8") == []


def test_int8_refuses_calibration_of_the_wrong_shape(target, model_onnx, tmp_path):
    if "int8" not in target.PRECISIONS:
        pytest.skip(f"{target.NAME} offers no int8")
    with pytest.raises(UserInputError, match=r"calibration data has shape \[40, 3, 28, 28\]"):
        target.compile(model_onnx, "int8", np.zeros((40, 3, 28, 28), np.float32), PROFILE, tmp_path / "int8")
    assert _leftovers(tmp_path, "int8") == []


def test_load_refuses_bad_threads_and_another_runtimes_artifact(fp32, target):
    with pytest.raises(UserInputError, match="threads must be >= 0"):
        target.load(fp32, -1)
    other = "mnn" if target.NAME != "mnn" else "openvino"
    with pytest.raises(UserInputError, match=f"not an? {target.NAME} one"):
        target.load(base.Artifact(fp32.path, dict(fp32.manifest, runtime=other)), 1)


def test_calibration_helper_shapes_and_counts():
    calib = onnx_input.calibration(np.zeros((33, 1, 4, 4), np.float64), [1, 1, 4, 4], min_samples=32)
    assert calib.dtype == np.float32 and calib.flags.c_contiguous and calib.shape == (33, 1, 4, 4)
    with pytest.raises(UserInputError, match="--precision fp16"):
        onnx_input.calibration(None, [1, 1, 4, 4], min_samples=32, fallback="fp16")
