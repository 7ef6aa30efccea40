"""Bad ONNX files given to ``edgeprune bench``: one ``edgeprune: error:`` line, exit 2, nothing compiled.

Invariant checked (``tests/badinput.py``): every file that ``targets.onnx_input`` refuses is
refused through the CLI before any runtime sees it -- no ONNX Runtime traceback for a custom
operator or for external data outside the model's folder -- and nothing is left behind.
The models are hand-built with ``onnx.helper`` (a 3x3 conv), so the cases run in milliseconds.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.badinput import DATA, Case, ids, run_case

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _conv_model(input_shape=(1, 1, 8, 8), *, extra_inputs=0, elem_type=TensorProto.FLOAT, custom=False):
    kernel = [3] * (len(input_shape) - 2)
    weight = numpy_helper.from_array(np.ones((4, input_shape[1], *kernel), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1] * 2 * len(kernel))]
    opsets = [helper.make_opsetid("", 17)]
    if custom:
        nodes.append(helper.make_node("FancyOp", ["y"], ["z"], domain="com.example"))
        opsets.append(helper.make_opsetid("com.example", 1))
    inputs = [helper.make_tensor_value_info("x", elem_type, list(input_shape))]
    inputs += [helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, list(input_shape))
               for i in range(extra_inputs)]
    output = helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT,
                                           [input_shape[0], 4, *input_shape[2:]])
    graph = helper.make_graph(nodes, "g", inputs, [output], [weight])
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def _save(model, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def _external(location: str, make_data: bool):
    """A model in ``sub/`` whose weight lives in the external file ``location`` (relative to ``sub/``)."""
    def setup(folder: Path) -> None:
        model = _conv_model()
        weight = model.graph.initializer[0]
        raw = numpy_helper.to_array(weight).tobytes()
        if make_data:
            (folder / "sub" / location).parent.mkdir(parents=True, exist_ok=True)
            (folder / "sub" / location).write_bytes(raw)
        weight.ClearField("float_data")
        weight.ClearField("raw_data")
        weight.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", "0"), ("length", str(len(raw)))):
            weight.external_data.add(key=key, value=value)
        _save(model, folder / "sub" / "m.onnx")
    return setup


def _saved(**kwargs):
    return lambda folder: _save(_conv_model(**kwargs), folder / "m.onnx")


def _dynamic(folder: Path) -> None:
    model = _conv_model()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    _save(model, folder / "m.onnx")


def _truncated(folder: Path) -> None:
    data = _conv_model().SerializeToString()
    (folder / "m.onnx").write_bytes(data[: len(data) // 2])


def _bench(model: str) -> list[str]:
    return ["bench", model, "--targets", "onnxruntime", "--precisions", "fp32", "--data", DATA, "--no-progress"]


CASES = [
    Case("missing-file", _bench("nosuch.onnx"), 2, "model not found"),
    Case("not-onnx", _bench("m.onnx"), 2, "not a readable ONNX model",
         setup=lambda f: (f / "m.onnx").write_text("this is a text file, not a model\n" * 20)),
    Case("truncated", _bench("m.onnx"), 2, "ONNX model", setup=_truncated),
    Case("custom-op", _bench("m.onnx"), 2, "custom operator(s) FancyOp (com.example)", setup=_saved(custom=True)),
    Case("external-data-outside", _bench("sub/m.onnx"), 2, "from outside the model's folder",
         setup=_external("../w.bin", make_data=True)),
    Case("external-data-absolute", _bench("sub/m.onnx"), 2, "from outside the model's folder",
         setup=_external("/etc/hostname", make_data=False)),
    Case("external-data-missing", _bench("sub/m.onnx"), 2, "external data file 'w.bin'",
         setup=_external("w.bin", make_data=False)),
    Case("dynamic-input", _bench("m.onnx"), 2, "dynamic input shape", setup=_dynamic),
    Case("two-inputs", _bench("m.onnx"), 2, "has 2 inputs", setup=_saved(extra_inputs=1)),
    Case("int64-input", _bench("m.onnx"), 2, "is not float32", setup=_saved(elem_type=TensorProto.INT64)),
    Case("not-nchw", _bench("m.onnx"), 2, "NCHW", setup=_saved(input_shape=(1, 8, 8))),
]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_bad_onnx_is_one_line_exit_2(case, tmp_path, capsys):
    line = run_case(case, tmp_path, capsys)
    assert "Traceback" not in line and "onnxruntime" not in line.lower().split(":")[0]


def test_external_data_inside_the_folder_is_accepted(tmp_path):
    """The positive control: the same external-data layout, kept inside the model's folder, reads fine."""
    from edgeprune.targets import onnx_input

    _external("w.bin", make_data=True)(tmp_path)
    spec = onnx_input.read(tmp_path / "sub" / "m.onnx")
    assert spec.input_shape == [1, 1, 8, 8] and spec.input_name == "x" and spec.outputs == ["y"]
    assert numpy_helper.to_array(spec.model.graph.initializer[0]).sum() == 36.0
