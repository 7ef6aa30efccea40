"""bench/in_context.py: an op (MNN: named after its ONNX output; OpenVINO: its runtime node) is attributed to the
layer it computes, so the per-layer comparison with the latency table lines up row by row."""
from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch.nn as nn

from edgeprune.export import export_onnx
from edgeprune.models import build_model
from tests.conftest import load_bench_script


@pytest.fixture(scope="module")
def ic():
    return load_bench_script("in_context")


def test_scopes_of_a_resnet_run(ic):
    names = ["conv1", "layer1.0.conv1", "layer3.0.conv2", "layer3.0.downsample.0", "layer3.1.conv2", "fc"]
    assert ic.layer_of("/conv1/Conv_output_0", names) == "conv1"
    assert ic.layer_of("/layer1/layer1.0/conv1/Conv_output_0", names) == "layer1.0.conv1"
    assert ic.layer_of("/layer3/layer3.0/downsample/downsample.0/Conv_output_0", names) == "layer3.0.downsample.0"
    assert ic.layer_of("/layer3/layer3.1/conv2/Conv_output_0", names) == "layer3.1.conv2"
    assert ic.layer_of("/layer3/layer3.1/conv1/Conv_output_0", names) is None   # not in the list: no near miss
    assert ic.layer_of("/maxpool/MaxPool_output_0", names) is None
    assert ic.layer_of("input_raster_0", names) is None
    # OpenVINO's runtime names: the op type and the fused remainder after the scope
    assert ic.layer_of("/layer3/layer3.0/downsample/downsample.0/Conv/WithoutBiases", names) == "layer3.0.downsample.0"
    assert ic.layer_of("/conv1/Conv/WithoutBiases", names) == "conv1"
    assert ic.layer_of("/layer1/layer1.0/conv1/Conv", names) == "layer1.0.conv1"
    assert ic.layer_of("/fc/Gemm/WithoutBiases", names) == "fc"
    assert ic.layer_of("/avgpool/GlobalAveragePool", names) is None


@pytest.mark.parametrize("model,shape", [("resnet18", (1, 1, 32, 32)), ("mobilenet_v2", (1, 3, 32, 32))])
def test_every_exported_conv_maps_to_its_own_module(ic, tmp_path, model, shape):
    net = build_model(model, num_classes=10, in_channels=shape[1]).eval()
    convs = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    path = export_onnx(net, shape, tmp_path / "m.onnx")["path"]
    outputs = [node.output[0] for node in onnx.load(path).graph.node if node.op_type == "Conv"]
    assert len(outputs) == len(convs)
    mapped = [ic.layer_of(o, convs) for o in outputs]
    assert None not in mapped, [o for o, m in zip(outputs, mapped) if m is None]
    assert sorted(mapped) == sorted(convs)   # one op per module, none twice


def test_openvino_counters_cover_every_convolution(ic, tmp_path):
    """Real OpenVINO: the plugin's per-node counters of a compiled ResNet-18 name every convolution's scope."""
    import numpy as np

    ov = pytest.importorskip("edgeprune.targets.openvino")
    if not ov.available()[0]:
        pytest.skip("openvino is not installed")
    from edgeprune.profiles import load_profile

    net = build_model("resnet18", num_classes=10, in_channels=1).eval()
    convs = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    path = export_onnx(net, (1, 1, 32, 32), tmp_path / "m.onnx")["path"]
    art = ov.compile(Path(path), "fp32", None, load_profile("x86"), tmp_path / "art")
    runner = ov.load(art.path, 1, perf_count=True)
    mapped = {ic.layer_of(name, convs) for name in runner.op_ms(np.zeros((1, 1, 32, 32), np.float32))}
    assert set(convs) <= mapped, sorted(set(convs) - mapped)
