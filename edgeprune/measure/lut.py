"""Latency lookup tables: measured latency of one layer in its real context over channel counts.

A layer *signature* fixes everything but the channel counts: kind (conv/depthwise/linear),
kernel, stride, padding, input spatial size, whether a ReLU is fused. For each signature the
table holds latency (ms) on a grid of (in, out) channel counts in steps of the target's
channel multiple. Every out-channel step is measured (that is where runtimes' staircases
are) up to ``max_out_points`` per layer; wider layers are measured at evenly strided
steps. In-channel steps are measured every ``in_stride`` steps. Between measured points
latency is interpolated linearly (``meta.sampling`` says so). Depthwise layers have one axis.

Micro-models are plain ONNX graphs (Conv [+ bias] [+ Relu], or Gemm) built with the onnx
helper, so tables can be built where torch is absent (a device). Invariant: ``lookup`` at a
measured grid point returns the measured value; between samples it interpolates linearly;
outside the measured range it raises ``KeyError``.

Rows are cached on disk by ``RowCache``: one JSON file per ``cache_key``, written atomically.
A cache file that cannot be read back as the row its key names (truncated, corrupt, wrong
shape) is a miss, never an error: one warning on stderr per cache, then the row is measured
again and the file replaced.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LayerSig:
    """Everything about a layer except its channel counts."""

    kind: str                      # "conv", "depthwise", "linear"; "unit", "identity" (``micro_units``)
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    in_hw: tuple[int, int] = (1, 1)
    relu: bool = True
    steps: tuple[str, ...] = ()    # a fused unit's chain (``micro_units.parse_step``)
    residual: bool = False         # a fused unit adds its input to its output

    def key(self) -> str:
        k, s, p, hw = self.kernel, self.stride, self.padding, self.in_hw
        unit = (f"[{'+'.join(self.steps)}]" if self.steps else "") + ("-add" if self.residual else "")
        return (f"{self.kind}-k{k[0]}x{k[1]}-s{s[0]}x{s[1]}-p{p[0]}x{p[1]}-{hw[0]}x{hw[1]}{unit}"
                f"{'-relu' if self.relu else ''}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LayerSig":
        return cls(d["kind"], tuple(d["kernel"]), tuple(d["stride"]), tuple(d["padding"]),
                   tuple(d["in_hw"]), bool(d["relu"]), tuple(d.get("steps", ())), bool(d.get("residual", False)))


def channel_grid(width: int, multiple: int) -> list[int]:
    """Channel counts a search may choose for a ``width``-channel layer: multiples, plus ``width``."""
    multiple = max(1, int(multiple))
    grid = list(range(multiple, width + 1, multiple))
    if not grid or grid[-1] != width:
        grid.append(width)
    return grid


def sampled_inputs(grid: list[int], in_stride: int) -> list[int]:
    """Every ``in_stride``-th grid point, always including both ends."""
    picks = grid[::max(1, in_stride)]
    if picks[-1] != grid[-1]:
        picks.append(grid[-1])
    return picks


def thin(grid: list[int], max_points: int) -> list[int]:
    """At most ``max_points`` of ``grid``: all of it if short, else evenly strided with both ends kept."""
    if len(grid) <= max_points:
        return list(grid)
    stride = -(-len(grid) // max_points)
    return sampled_inputs(grid, stride)


# Runtimes whose dense convolutions with a kernel over 1x1 are measured with a *sink*: a global average pool that
# consumes the layer's output in the runtime's own layout, so the micro-model's output is [1, C, 1, 1] instead of the
# whole feature map (the row's identity gets the same sink, so the pool's own cost is netted out). Without it such a
# micro-model pays for handing its feature map back in the plain layout the caller reads, which a layer inside a
# model never does, and the runtime may even pick another kernel for it: OpenVINO's ResNet-18 @96 stem convolution
# (7x7/2, 1 -> C, a 48x48 output) on an Intel Xeon took 0.21 ms at 48 channels and 0.53 ms at 56 as a model's
# output, 0.11 and 0.15 ms followed by a global pool, 0.126 ms at 64 inside the whole model. Not on 1x1 and
# depthwise rows, nor on units made of them (MobileNetV2's): sinking those too took MobileNetV2 @96 from 53% to 40%
# of 30 random variants within ±10% on the same measurements, since there the output's handling stands in for the
# memory traffic between layers that a model does pay (session 36, bench/RESULTS.md §4). Measured on OpenVINO only;
# ncnn's and MNN's rows are as they were.
SINK_RUNTIMES = frozenset({"openvino"})


def sinks(runtime: str, sig: LayerSig) -> bool:
    """Whether ``sig``'s micro-models (and its identity's) end in the sink on ``runtime`` (see ``SINK_RUNTIMES``):
    a dense convolution with a kernel over 1x1, or a fused unit holding one (a ResNet basic block), so a unit and its
    parts, whose times decide whether the runtime fuses them, are measured alike."""
    if runtime not in SINK_RUNTIMES:
        return False
    if sig.kind == "unit":
        from edgeprune.measure.micro_units import parse_step

        return any(step["op"] == "conv" and step["k"] > 1 for step in map(parse_step, sig.steps))
    return sig.kind == "conv" and max(sig.kernel) > 1


def sink(nodes: list, cur: str) -> str:
    """Append the sink (a GlobalAveragePool of ``cur``) to ``nodes``; the new output's name."""
    from onnx import helper

    nodes.append(helper.make_node("GlobalAveragePool", [cur], ["sink"]))
    return "sink"


def micro_onnx(sig: LayerSig, in_c: int, out_c: int, path: Path, with_sink: bool = False) -> Path:
    """Write a one-layer ONNX model (batch 1, static shape) for ``sig`` at (in_c, out_c).

    Fused units and identities (``sig.kind`` "unit" / "identity") are built by ``micro_units``. ``with_sink``: the
    output feature map goes through ``sink`` (see ``SINK_RUNTIMES``; a linear layer's output is small already).
    """
    if sig.kind in ("unit", "identity"):
        from edgeprune.measure import micro_units

        build = micro_units.unit_onnx if sig.kind == "unit" else micro_units.identity_onnx
        return build(sig, in_c, out_c, path, with_sink=with_sink)
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if sig.kind == "linear":
        x_shape, w_shape = [1, in_c], [out_c, in_c]
        node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)
    else:
        groups = in_c if sig.kind == "depthwise" else 1
        if sig.kind == "depthwise":
            out_c = in_c
        x_shape = [1, in_c, *sig.in_hw]
        w_shape = [out_c, in_c // groups, *sig.kernel]
        node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=list(sig.kernel),
                                strides=list(sig.stride), pads=[*sig.padding, *sig.padding], group=groups)
    w = numpy_helper.from_array((rng.standard_normal(w_shape) * 0.1).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(out_c, np.float32), "b")
    nodes = [node]
    out_name = "y"
    if sig.relu:
        nodes.append(helper.make_node("Relu", ["y"], ["z"]))
        out_name = "z"
    if with_sink and sig.kind != "linear":
        out_name = sink(nodes, out_name)
    graph = helper.make_graph(nodes, "lut", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, None)], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model = onnx.shape_inference.infer_shapes(model)
    onnx.save(model, str(path))
    return path


@dataclass
class SigTable:
    """Measured latency of one signature: ``ms[i][j]`` at (ins[i], outs[j]); depthwise: ins == outs, diagonal."""

    sig: LayerSig
    ins: list[int]
    outs: list[int]
    ms: list[list[float | None]]

    def lookup(self, in_c: int, out_c: int) -> float:
        if self.sig.kind == "depthwise":
            return self._interp_1d(self.ins, [self.ms[i][0] for i in range(len(self.ins))], in_c)
        if out_c in self.outs:
            return self._column(self.outs.index(out_c), in_c)
        # between two measured out-counts (wide layers are sampled sparsely): linear in out too
        j = int(np.searchsorted(self.outs, out_c))
        if j == 0 or j == len(self.outs):
            raise KeyError(f"{self.sig.key()}: out={out_c} is outside the measured range {self.outs[0]}..{self.outs[-1]}")
        lo, hi = self.outs[j - 1], self.outs[j]
        w = (out_c - lo) / (hi - lo)
        return (1 - w) * self._column(j - 1, in_c) + w * self._column(j, in_c)

    def _column(self, j: int, in_c: int) -> float:
        col = [(self.ins[i], self.ms[i][j]) for i in range(len(self.ins)) if self.ms[i][j] is not None]
        return self._interp_1d([c for c, _ in col], [v for _, v in col], in_c)

    def _interp_1d(self, xs: list[int], ys: list[float], x: int) -> float:
        if not xs or x < xs[0] or x > xs[-1]:
            raise KeyError(f"{self.sig.key()}: {x} channels is outside the measured range {xs[:1]}..{xs[-1:]}")
        return float(np.interp(x, xs, ys))

    def to_dict(self) -> dict[str, Any]:
        return {"sig": asdict(self.sig), "ins": self.ins, "outs": self.outs, "ms": self.ms}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SigTable":
        return cls(LayerSig.from_dict(d["sig"]), list(d["ins"]), list(d["outs"]), d["ms"])


def cache_key(context: dict[str, Any], sig: LayerSig, ins: list[int], outs: list[int]) -> str:
    """Stable hash of what makes a measurement reusable: target, runtime versions, host, threads, grid."""
    blob = json.dumps({"context": context, "sig": sig.key(), "ins": ins, "outs": outs}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _row_problem(row: SigTable, sig: LayerSig, ins: list[int], outs: list[int]) -> str | None:
    """Why ``row`` is not the measured row of ``sig`` over (ins, outs), or None when it is."""
    want_outs = [ins[-1]] if sig.kind == "depthwise" else outs
    # adaptive sampling may have added points: the planned grid must be a subset, in order
    if (row.sig != sig or not set(ins) <= set(row.ins) or not set(want_outs) <= set(row.outs)
            or row.ins != sorted(set(row.ins)) or row.outs != sorted(set(row.outs))):
        return "its channel grid is not the one its name promises"
    if not isinstance(row.ms, list) or len(row.ms) != len(row.ins):
        return "its latency grid has the wrong number of rows"
    for line in row.ms:
        if not isinstance(line, list) or len(line) != len(row.outs):
            return "its latency grid has a row of the wrong length"
        for v in line:
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                  or not math.isfinite(v) or v < 0):
                return f"it holds a latency that is not a number of milliseconds ({str(v)[:20]})"
    return None


class RowCache:
    """Measured rows on disk under ``folder``, one ``<cache_key>.json`` each; unreadable files are misses."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.warned = False

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def get(self, key: str, sig: LayerSig, ins: list[int], outs: list[int]) -> SigTable | None:
        """The cached row for ``key`` (``sig`` over ins x outs), or None if absent or unreadable."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            row = SigTable.from_dict(json.loads(path.read_text(encoding="utf-8")))
            problem = _row_problem(row, sig, ins, outs)
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            problem = f"it is not a readable table row ({type(exc).__name__})"
        if problem is None:
            return row
        self._warn(path, problem)
        return None

    def put(self, key: str, row: SigTable) -> Path:
        """Write ``row`` for ``key`` atomically: a reader sees the old file or the whole new one."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(row.to_dict(), fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def _warn(self, path: Path, problem: str) -> None:
        if not self.warned:
            print(f"edgeprune: warning: latency-table cache file {path} is damaged ({problem}); "
                  "measuring that row again and replacing the file", file=sys.stderr, flush=True)
            self.warned = True
