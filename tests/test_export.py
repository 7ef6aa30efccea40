"""ONNX export is static-shape, simplified, and checked against PyTorch; a mismatch fails."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgeprune.errors import CompileError
from edgeprune.export import export_onnx, onnx_outputs, torch_outputs
from edgeprune.prune import prune
from tests.conftest import make_tiny_cnn


def test_export_matches_pytorch_and_is_static(tmp_path, random_inputs):
    model = make_tiny_cnn()
    info = export_onnx(model, (1, 1, 28, 28), tmp_path / "m.onnx", check_inputs=random_inputs)
    assert info["max_abs_diff"] < 1e-4 and info["opset"] >= 17 and info["checked_on"] == 16
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [1, 1, 28, 28]
    # onnxslim folded BatchNorm into the convolutions
    assert "BatchNormalization" not in {n.op_type for n in graph.node}
    np.testing.assert_allclose(onnx_outputs(tmp_path / "m.onnx", random_inputs),
                               torch_outputs(model, random_inputs), atol=1e-4)


def test_pruned_model_exports_with_fewer_channels(tmp_path, random_inputs):
    model = make_tiny_cnn()
    pruned = prune(model, torch.zeros(1, 1, 28, 28), ratio=0.5, round_to=4)
    export_onnx(pruned, (1, 1, 28, 28), tmp_path / "p.onnx", check_inputs=random_inputs)
    inits = {i.name: list(i.dims) for i in onnx.load(str(tmp_path / "p.onnx")).graph.initializer}
    conv_out = sorted(d[0] for d in inits.values() if len(d) == 4)
    assert max(conv_out) == pruned.conv3.out_channels < model.conv3.out_channels


class _DiffersInEval(nn.Module):
    """Traced export sees one branch; a Python-side random branch makes PyTorch differ at check time."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        y = self.conv(x)
        return y * 2.0 if self.calls > 1 else y  # the exporter traces the first call only


def test_mismatch_fails_and_leaves_no_file(tmp_path, random_inputs):
    with pytest.raises(CompileError, match="does not match PyTorch"):
        export_onnx(_DiffersInEval(), (1, 1, 28, 28), tmp_path / "bad.onnx", check_inputs=random_inputs)
    assert list(tmp_path.iterdir()) == []
