"""Micro-models for fused units and for the identity that measures a micro-model's own I/O cost.

A *unit* (``LayerSig`` kind ``"unit"``) is a chain of convolutions the runtime may execute as
fewer kernels than PyTorch layers: MobileNetV2's expand 1x1 + depthwise 3x3 + project 1x1
(+ residual add), a ResNet basic block, or a pair of them. It has two free channel axes,
``a`` (the unit's input width) and ``b``. Each step is one string ``"<conv|dw>-k<k>-s<s>[-<a|b>][-relu]"``:
a conv's output width is the axis it names, a depthwise conv keeps its input width; padding
is always "same" ((k - 1) // 2). ``sig.residual`` adds the unit's input to its output (the
widths must match: the last conv targets ``a``), and ``sig.relu`` applies a ReLU after that add.

An *identity* (kind ``"identity"``) has the input and output shapes of the micro-model it
stands for — input [1, in, H, W], output [1, max(in, out), H/stride, W/stride] — and does no
arithmetic: a 1x1 max-pool with the stride, then a zero channel Pad up to ``out`` (ops that
ncnn's pnnx, MNN and OpenVINO all convert; see ``identity_onnx`` for out < in). Measured the same way, its time is what the runtime spends on a one-layer
model beyond the layer: the per-inference call, input and output copies.
Invariant: both builders write a valid single-input ONNX model whose input is
[1, in_c, *sig.in_hw]; nothing here imports torch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def parse_step(step: str) -> dict[str, Any]:
    """``"conv-k1-s1-b-relu"`` -> {"op": "conv", "k": 1, "s": 1, "to": "b", "relu": True}."""
    parts = step.split("-")
    out = {"op": parts[0], "k": 1, "s": 1, "to": None, "relu": False}
    for p in parts[1:]:
        if p[0] == "k":
            out["k"] = int(p[1:])
        elif p[0] == "s":
            out["s"] = int(p[1:])
        elif p in ("a", "b"):
            out["to"] = p
        elif p == "relu":
            out["relu"] = True
    if out["op"] not in ("conv", "dw") or (out["op"] == "conv" and out["to"] is None):
        raise ValueError(f"not a unit step: {step!r}")
    return out


def unit_io(sig: Any, a: int, b: int) -> tuple[int, int, int]:
    """(input width, output width, total stride) of unit ``sig`` at axes (a, b)."""
    width, stride = a, 1
    for step in map(parse_step, sig.steps):
        if step["op"] == "conv":
            width = a if step["to"] == "a" else b
        stride *= step["s"]
    return a, width, stride


def _save(nodes, inits, in_shape, out_name, path: Path, with_sink: bool = False) -> Path:
    import onnx
    from onnx import TensorProto, helper

    if with_sink:
        from edgeprune.measure.lut import sink

        out_name = sink(nodes, out_name)

    graph = helper.make_graph(nodes, "lut", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(onnx.shape_inference.infer_shapes(model), str(path))
    return path


def unit_onnx(sig: Any, a: int, b: int, path: Path, with_sink: bool = False) -> Path:
    """Write the unit's chain at axes (a, b): Conv [+ Relu] per step, then [Add x] [+ Relu] [+ the sink:
    ``lut.sink``]."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, cur, width = [], [], "x", a
    for i, step in enumerate(map(parse_step, sig.steps)):
        out_c = width if step["op"] == "dw" else (a if step["to"] == "a" else b)
        groups = width if step["op"] == "dw" else 1
        w = (rng.standard_normal([out_c, width // groups, step["k"], step["k"]]) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(out_c, np.float32), f"b{i}")]
        p = (step["k"] - 1) // 2
        nodes.append(helper.make_node("Conv", [cur, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[step["k"]] * 2,
                                      strides=[step["s"]] * 2, pads=[p] * 4, group=groups))
        cur, width = f"c{i}", out_c
        if step["relu"]:
            nodes.append(helper.make_node("Relu", [cur], [f"r{i}"]))
            cur = f"r{i}"
    if sig.residual:
        nodes.append(helper.make_node("Add", [cur, "x"], ["sum"]))
        cur = "sum"
    if sig.relu:
        nodes.append(helper.make_node("Relu", [cur], ["out"]))
        cur = "out"
    return _save(nodes, inits, [1, a, *sig.in_hw], cur, path, with_sink)


def identity_onnx(sig: Any, in_c: int, out_c: int, path: Path, with_sink: bool = False) -> Path:
    """Write the no-arithmetic model with input [1, in_c, H, W] and output [1, out_c, H/s, W/s] (with
    ``with_sink``: that map through ``lut.sink``, as the micro-models it nets are).

    Built from ops every target converts (pnnx for ncnn refuses a strided Slice): a 1x1 max-pool with
    stride s (a strided copy; also the whole model when nothing else changes), then a zero Pad of the
    channels up to ``out_c``. With ``out_c < in_c`` the output keeps all ``in_c`` channels: pnnx converts
    neither a channel Slice nor a Split to a single-output ncnn model correctly, so such an identity
    over-counts the output copy by (in_c - out_c) channels.
    """
    from onnx import helper, numpy_helper

    s = sig.stride[0]
    h, w = sig.in_hw
    nodes, inits, cur = [], [], "x"
    if s > 1:
        nodes.append(helper.make_node("MaxPool", [cur], ["pool"], kernel_shape=[1, 1], strides=[s, s]))
        cur = "pool"
    if out_c > in_c:
        inits.append(numpy_helper.from_array(np.array([0, 0, 0, 0, 0, out_c - in_c, 0, 0], np.int64), "pads"))
        nodes.append(helper.make_node("Pad", [cur, "pads"], ["pad"], mode="constant"))
        cur = "pad"
    if not nodes:  # same shape in and out: a stride-1 1x1 max-pool, one copy (a graph of Identity alone
        nodes.append(helper.make_node("MaxPool", [cur], ["y"], kernel_shape=[1, 1], strides=[1, 1]))  # fails pnnx)
        cur = "y"
    return _save(nodes, inits, [1, in_c, h, w], cur, path, with_sink)
