"""Reading ncnn's model files: the text ``.param`` graph and the ``.bin`` weight blobs.

Invariant: ``weight_storage`` reports, blob by blob, the storage type ncnn's own
loader (``ModelBinFromDataReader::load``) would see in the ``.bin``; it never
guesses. A layer whose weight layout it does not know stops the walk and the
result says ``complete: False``; a walk that covers every layer must end exactly
at the end of the file, otherwise the ``.bin`` does not belong to the ``.param``.

The ``.bin`` layout: layers in ``.param`` order, each reading its blobs in turn.
Blobs loaded with type 0 (convolution/inner-product weights) start with a 4-byte
tag: ``0x01306B47`` fp16 (then ``align4(n * 2)`` bytes), ``0x000D4B38`` int8
(``align4(n)`` bytes), ``0x0002C056`` fp32 with scaling (``n * 4`` bytes), all-zero
raw fp32 (``n * 4`` bytes), any other non-zero tag 8-bit indices into a 256-entry
fp32 table (``1024 + align4(n)`` bytes). Blobs loaded with type 1 (biases,
BatchNorm statistics, Scale, PReLU slopes) are untagged fp32. Pure Python + numpy:
no torch, no ncnn.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeprune.errors import UserInputError

PARAM_MAGIC = 7767517
TAG_FP16, TAG_INT8, TAG_FP32_SCALED = 0x01306B47, 0x000D4B38, 0x0002C056

# Layer types whose weights are (tagged weight of size key W, optional fp32 bias of size key N if key B == 1).
# Conv family: W=6 (weight_data_size), B=5 (bias_term), N=0 (num_output); InnerProduct: W=2, B=1, N=0.
_TAGGED = {t: (6, 5, 0) for t in (
    "Convolution", "ConvolutionDepthWise", "Deconvolution", "DeconvolutionDepthWise",
    "Convolution1D", "ConvolutionDepthWise1D", "Convolution3D", "ConvolutionDepthWise3D",
    "Deconvolution1D", "DeconvolutionDepthWise1D", "Deconvolution3D", "DeconvolutionDepthWise3D")}
_TAGGED["InnerProduct"] = (2, 1, 0)
# Layer types that never read the .bin.
_WEIGHTLESS = frozenset((
    "Input", "Split", "ReLU", "ReLU6", "Clip", "Sigmoid", "TanH", "Swish", "HardSwish", "HardSigmoid", "Mish",
    "GELU", "ELU", "SELU", "BNLL", "AbsVal", "Exp", "Log", "Power", "UnaryOp", "BinaryOp", "Eltwise",
    "Pooling", "Pooling1D", "Pooling3D", "Flatten", "Reshape", "Permute", "Concat", "Slice", "Crop",
    "Interp", "Softmax", "Dropout", "Noop", "Squeeze", "ExpandDims", "Reduction", "ShuffleChannel",
    "PixelShuffle", "Reorg", "Packing", "Cast", "Tile", "ArgMax", "Threshold", "CopyTo"))


@dataclass
class Layer:
    """One line of a ``.param``: type, name, input/output blob names and ``key=value`` params."""

    type: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: dict[int, Any] = field(default_factory=dict)

    def int(self, key: int, default: int = 0) -> int:
        return int(float(self.params.get(key, default)))


def _parse_params(tokens: list[str]) -> dict[int, Any]:
    params: dict[int, Any] = {}
    for tok in tokens:
        key, _, value = tok.partition("=")
        k = int(key)
        if k <= -23300:  # array param: -23300 - k = key, value "n,a,b,..."
            params[-23300 - k] = value.split(",")[1:]
        else:
            params[k] = value
    return params


def read_param(path: Path) -> list[Layer]:
    """The layers of an ncnn ``.param`` text file, in file order."""
    lines = [ln.split() for ln in Path(path).read_text().splitlines() if ln.strip()]
    if len(lines) < 2 or lines[0] != [str(PARAM_MAGIC)]:
        raise UserInputError(f"{path} is not an ncnn .param file (no magic {PARAM_MAGIC})", "rebuild the artifact")
    layers = []
    for tok in lines[2:]:
        n_in, n_out = int(tok[2]), int(tok[3])
        ios = tok[4:4 + n_in + n_out]
        layers.append(Layer(tok[0], tok[1], ios[:n_in], ios[n_in:], _parse_params(tok[4 + n_in + n_out:])))
    return layers


def io_blobs(layers: list[Layer]) -> tuple[list[str], list[str]]:
    """(input blob names: tops of ``Input`` layers; output blobs: produced, never consumed, ``outN`` by N)."""
    inputs = [top for layer in layers if layer.type == "Input" for top in layer.tops]
    consumed = {b for layer in layers for b in layer.bottoms}
    outputs = [top for layer in layers if layer.type != "Input" for top in layer.tops if top not in consumed]

    def order(name: str) -> tuple[int, int]:
        m = re.fullmatch(r"out(\d+)", name)
        return (0, int(m.group(1))) if m else (1, outputs.index(name))

    return inputs, sorted(outputs, key=order)


def _align4(n: int) -> int:
    return (n + 3) // 4 * 4


def _tagged_blob(data: bytes, offset: int, n: int) -> tuple[str, int]:
    """(storage type, bytes used) of a type-0 blob of ``n`` elements at ``offset``."""
    if offset + 4 > len(data):
        raise ValueError("truncated")
    tag = int.from_bytes(data[offset:offset + 4], "little")
    if tag == TAG_FP16:
        return "fp16", 4 + _align4(n * 2)
    if tag == TAG_INT8:
        return "int8", 4 + _align4(n)
    if tag == TAG_FP32_SCALED or tag == 0:
        return "fp32", 4 + n * 4
    return "int8-table", 4 + 1024 + _align4(n)


def _raw_sizes(layer: Layer) -> list[int] | None:
    """Element counts of the untagged fp32 blobs of a layer type without tagged weights (None: unknown)."""
    if layer.type in _WEIGHTLESS:
        return []
    if layer.type == "BatchNorm":
        return [layer.int(0)] * 4
    if layer.type == "Scale":
        n = layer.int(0)
        return [] if n == -233 else [n] * (2 if layer.int(1) else 1)
    if layer.type == "PReLU":
        return [layer.int(0)]
    return None


def weight_storage(param_path: Path, bin_path: Path) -> dict[str, Any]:
    """``{"tagged": {type: n}, "fp32_raw": n, "complete": bool, "unparsed_layer": type|None}`` for a .bin."""
    data = Path(bin_path).read_bytes()
    tagged: dict[str, int] = {}
    raw = offset = 0
    for layer in read_param(param_path):
        if layer.type in _TAGGED and not layer.int(19) and not layer.int(8):  # not dynamic-weight, not int8-scaled
            w_key, b_key, n_key = _TAGGED[layer.type]
            try:
                kind, used = _tagged_blob(data, offset, layer.int(w_key))
            except ValueError:
                return _walk_result(tagged, raw, False, layer.type, "the .bin ends inside its weights")
            tagged[kind] = tagged.get(kind, 0) + 1
            offset += used
            sizes = [layer.int(n_key)] if layer.int(b_key) else []
        else:
            sizes = _raw_sizes(layer)
            if sizes is None:
                return _walk_result(tagged, raw, False, layer.type, "weight layout not known here")
        raw += len(sizes)
        offset += 4 * sum(sizes)
    if offset != len(data):
        return _walk_result(tagged, raw, False, None, f"the layers use {offset} bytes, the .bin has {len(data)}")
    return _walk_result(tagged, raw, True, None, "")


def _walk_result(tagged: dict[str, int], raw: int, complete: bool, layer: str | None, why: str) -> dict[str, Any]:
    return {"tagged": tagged, "fp32_raw": raw, "complete": complete, "unparsed_layer": layer, "note": why}


def weights_precision(storage: dict[str, Any]) -> str:
    """One word for the tagged (conv/linear) weights: fp16, fp32, int8, mixed or unknown."""
    kinds = {("int8" if k.startswith("int8") else k) for k in storage["tagged"]}
    if len(kinds) == 1:
        return kinds.pop()
    return "mixed" if kinds else "unknown"
