"""What a TensorRT engine really computes in, read from its engine-inspector JSON.

``engine.create_engine_inspector().get_engine_information(LayerInformationFormat.JSON)``
returns ``{"Layers": [...], "Bindings": [...]}`` (TensorRT 10.x) or
``{"Layers": [...], "I/O Tensors": [...]}`` (11.x). Built with
``ProfilingVerbosity.DETAILED`` every layer is an object whose ``Inputs``/``Outputs``
describe each tensor's type, either inside one ``"Format/Datatype"`` string (10.x:
``"Row major linear FP32"``, ``"Channel major FP16 format where channel % 8 == 0"``,
``"Thirty-two wide channel vectorized row major Int8 format"``, or a bare ``"Half"``)
or in a ``"DataType"`` field of its own (11.x). Built with the default
``LAYER_NAMES_ONLY`` verbosity every layer is just its name, and nothing about
precision can be read.

Invariant: ``summarize_engine_json`` never guesses. A layer's *compute* precision is
the type of its first input (the tensor a convolution or matrix multiply reads),
falling back to its weights' type, then its first output; an engine without layer
details reports ``precision = "unknown"`` with a hint to rebuild with detailed
profiling, never a precision. The verdict is taken over the layers that carry the
arithmetic (convolutions and matrix multiplies; every layer if there are none):

- ``int8`` if at least one convolution (matrix multiply when the model has no
  convolution) computes in Int8 -- an int8 request with none is not honoured;
- ``fp16`` if some compute in Half/BFloat16 and Float is not the majority -- an
  fp16 request whose convolutions mostly run Float is not honoured;
- ``fp32`` if none computes in a reduced type; ``mixed`` otherwise.

This module imports neither TensorRT nor torch; ``engine_json`` is the one thin
call into a real engine.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

REDUCED_FLOAT = ("Half", "BFloat16")
QUANTIZED = ("Int8", "FP8", "Int4", "FP4")
DETAIL_HINT = ("the engine was built without detailed layer information; rebuild it with "
               "profiling verbosity DETAILED (edgeprune's compile always does)")
# Lower-case word in a Format/Datatype description -> TensorRT's data type name.
_DTYPE_WORDS = {
    "float": "Float", "fp32": "Float", "float32": "Float",
    "half": "Half", "fp16": "Half", "float16": "Half",
    "bfloat16": "BFloat16", "bf16": "BFloat16",
    "int8": "Int8", "fp8": "FP8", "int4": "Int4", "fp4": "FP4",
    "int32": "Int32", "int64": "Int64", "uint8": "UInt8", "bool": "Bool", "double": "Double",
}
_DTYPE_KEYS = ("DataType", "Datatype", "Format/Datatype", "Format/DataType")
_MATMUL_WORDS = ("matrixmultiply", "matmul", "gemm", "fullyconnected")


def engine_json(engine, trt) -> str:
    """The inspector's JSON for a deserialized ``engine`` (needs TensorRT and the GPU that built it)."""
    inspector = engine.create_engine_inspector()
    return inspector.get_engine_information(trt.LayerInformationFormat.JSON)


def tensor_dtype(tensor: Any) -> str | None:
    """TensorRT's type name ("Float", "Half", "Int8", ...) of one inspector tensor entry, or None if unknown."""
    if not isinstance(tensor, dict):
        return None
    for key in _DTYPE_KEYS:
        text = tensor.get(key)
        if isinstance(text, str):
            found = dtype_from_text(text)
            if found:
                return found
    return None


def dtype_from_text(text: str) -> str | None:
    """The first data-type word in a format description ("Channel major FP16 format ..." -> "Half")."""
    for word in re.findall(r"[A-Za-z0-9]+", text):
        found = _DTYPE_WORDS.get(word.lower())
        if found:
            return found
    return None


def layer_kind(layer: dict[str, Any]) -> str:
    """"conv" for (de)convolutions, "matmul" for matrix multiplies / fully connected / GEMM, else "other"."""
    text = f"{layer.get('ParameterType', '')} {layer.get('LayerType', '')}".lower()
    if "reformat" in text:
        return "other"
    if "conv" in text:
        return "conv"
    if any(word in text for word in _MATMUL_WORDS):
        return "matmul"
    return "other"


def compute_dtype(layer: dict[str, Any]) -> str | None:
    """The type a layer computes in: its first input's, else its weights', else its first output's."""
    for tensor in layer.get("Inputs") or []:
        found = tensor_dtype(tensor)
        if found:
            return found
    weights = layer.get("Weights")
    if isinstance(weights, dict) and isinstance(weights.get("Type"), str):
        found = dtype_from_text(weights["Type"])
        if found:
            return found
    return output_dtype(layer)


def output_dtype(layer: dict[str, Any]) -> str | None:
    outputs = layer.get("Outputs") or []
    return tensor_dtype(outputs[0]) if outputs else None


def io_tensor_names(info: dict[str, Any]) -> list[str]:
    """Engine input/output names from 10.x ``Bindings`` (strings) or 11.x ``I/O Tensors`` (objects)."""
    if isinstance(info.get("Bindings"), list):
        return [str(b) for b in info["Bindings"]]
    return [str(t.get("Name")) for t in info.get("I/O Tensors") or [] if isinstance(t, dict)]


def decide_precision(counts: Counter, int8_counts: Counter) -> str:
    """The verdict of the module docstring from compute-type counts of the arithmetic layers."""
    total = sum(counts.values())
    if not total:
        return "unknown"
    if sum(int8_counts[t] for t in QUANTIZED) > 0:
        return "int8"
    reduced = sum(counts[t] for t in REDUCED_FLOAT + QUANTIZED)
    if reduced == 0:
        return "fp32"
    if counts["Float"] * 2 <= total:
        return "fp16"
    return "mixed"


def _layer_rows(layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"name": str(layer.get("Name", "")), "type": str(layer.get("ParameterType") or layer.get("LayerType", "")),
             "kind": layer_kind(layer), "compute": compute_dtype(layer), "output": output_dtype(layer)}
            for layer in layers]


def summarize_engine_json(text: str | bytes) -> dict[str, Any]:
    """Per-layer precisions and the engine's verdict (see the module docstring) from the inspector's JSON."""
    info = json.loads(text)
    if not isinstance(info, dict) or not isinstance(info.get("Layers"), list):
        raise ValueError("engine information is not an inspector JSON object with a 'Layers' list")
    layers = info["Layers"]
    base = {"layers": len(layers), "io_tensors": io_tensor_names(info)}
    if not layers or not all(isinstance(layer, dict) for layer in layers):
        return {**base, "detailed": False, "precision": "unknown", "hint": DETAIL_HINT,
                "layer_names": [str(layer) for layer in layers]}
    rows = _layer_rows(layers)
    by_kind = {kind: Counter(r["compute"] or "unknown" for r in rows if r["kind"] == kind)
               for kind in ("conv", "matmul")}
    arithmetic = by_kind["conv"] + by_kind["matmul"] or Counter(r["compute"] or "unknown" for r in rows)
    int8_basis = by_kind["conv"] or arithmetic
    return {**base, "detailed": True, "precision": decide_precision(arithmetic, int8_basis),
            "by_compute": dict(Counter(r["compute"] or "unknown" for r in rows)),
            "by_output": dict(Counter(r["output"] or "unknown" for r in rows)),
            "conv": dict(by_kind["conv"]), "matmul": dict(by_kind["matmul"]), "layer_table": rows}


def precision_problem(requested: str, summary: dict[str, Any]) -> str | None:
    """Why an engine summarized as ``summary`` does not honour ``requested`` (None when it does)."""
    if not summary.get("detailed"):
        return f"cannot verify that the engine runs {requested}: {summary.get('hint', DETAIL_HINT)}"
    got = summary["precision"]
    if got == requested:
        return None
    conv, matmul = summary.get("conv") or {}, summary.get("matmul") or {}
    where = f"convolutions {conv or '{}'}, matrix multiplies {matmul or '{}'}"
    if requested == "int8":
        return f"no convolution runs in Int8 (engine precision {got}; {where})"
    if requested == "fp16":
        return f"most convolutions/matrix multiplies run in Float, not Half (engine precision {got}; {where})"
    return f"the engine runs {got}, not {requested} ({where})"
