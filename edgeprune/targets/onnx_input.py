"""What every target does with an ONNX file and calibration data before compiling: one place.

Invariant: ``read`` returns an ``OnnxInput`` only for a file that exists, parses as ONNX,
uses no operator from a domain the caller did not allow (they are named), keeps any
external data files inside the model's own folder, passes ``onnx.checker``, and has
exactly one graph input: static, float32, of an allowed rank (NCHW by default).
Anything else is a ``UserInputError`` whose message is one line naming the file and
what to do, raised before any runtime sees the model (so no runtime's traceback, and
nothing written). ``calibration`` returns float32 samples shaped like the model input,
at least ``min_samples`` of them, or raises the same way. ``one_line`` is the single
formatter for a third-party exception's message (its last non-empty line).

Imports neither torch nor any runtime; onnx is imported inside the functions.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from edgeprune.errors import UnsupportedPrecision, UserInputError

STANDARD_DOMAINS = frozenset({"", "ai.onnx"})
_FLOAT = 1  # onnx.TensorProto.FLOAT
_REEXPORT = "pass an .onnx file exported with 'edgeprune build' or torch.onnx.export"


def one_line(exc: BaseException) -> str:
    """The last non-empty line of an exception's message (runtimes put the reason last), or its type."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


@dataclass(frozen=True)
class OnnxInput:
    """A checked ONNX model (external data loaded) and its single static input."""

    path: Path
    model: Any = field(repr=False)
    input_name: str
    input_shape: list[int]
    outputs: list[str]


def require_file(onnx_path: str | os.PathLike) -> Path:
    path = Path(onnx_path)
    if not path.is_file():
        raise UserInputError(f"ONNX file {path} does not exist", "export the model first")
    return path


def _parse(path: Path):
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError/RuntimeWarning and friends for non-ONNX bytes
        raise UserInputError(f"{path} is not a readable ONNX model ({one_line(exc)})", _REEXPORT) from exc
    if not model.graph.node and not model.graph.input:
        raise UserInputError(f"{path} is not an ONNX model (no graph found)", _REEXPORT)
    return model


def _all_nodes(graph) -> Iterable[Any]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in list(attr.graphs) + ([attr.g] if attr.HasField("g") else []):
                yield from _all_nodes(sub)


def check_domains(model, path: Path, allowed: Iterable[str], runtime: str | None) -> None:
    """Refuse operators from domains outside ``allowed``, naming them (op_type and domain)."""
    allowed = set(allowed)
    local = {f.name for f in getattr(model, "functions", [])}  # model-local functions expand to standard ops
    custom = sorted({f"{n.op_type} ({n.domain})" for n in _all_nodes(model.graph)
                     if n.domain not in allowed and n.op_type not in local})
    if custom:
        who = runtime or "edgeprune's targets"
        raise UserInputError(f"{path} uses custom operator(s) {', '.join(custom)} that {who} cannot run",
                             "replace them with standard ONNX operators and re-export")


def _tensors(graph) -> Iterable[Any]:
    yield from graph.initializer
    for node in _all_nodes(graph):
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t


def check_external_data(model, path: Path) -> None:
    """Every external data file a tensor names lies inside the model's folder and exists."""
    folder = path.parent.resolve()
    for tensor in _tensors(model.graph):
        if tensor.data_location != 1:  # TensorProto.EXTERNAL
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if not location or os.path.isabs(location) or not target.is_relative_to(folder):
            raise UserInputError(f"{path}: tensor {tensor.name!r} reads external data {location!r} from outside "
                                 f"the model's folder {folder}", "keep the .onnx and its data files in one folder")
        if not target.is_file():
            raise UserInputError(f"{path}: external data file {location!r} of tensor {tensor.name!r} is missing",
                                 "copy the model's data files next to the .onnx")


def _check_and_load_data(model, path: Path):
    import onnx
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    try:
        if any(uses_external_data(t) for t in _tensors(model.graph)):
            onnx.checker.check_model(str(path))  # by path: the checker also reads the external data
            load_external_data_for_model(model, str(path.parent))
        else:
            onnx.checker.check_model(model)
    except Exception as exc:  # onnx ValidationError, OSError on external data, protobuf errors
        raise UserInputError(f"{path} is not a valid ONNX model: {one_line(exc)}",
                             "check that the file is complete (re-export it)") from exc
    return model


def input_spec(model, path: Path, ranks: tuple[int, ...] = (4,)) -> tuple[str, list[int]]:
    """Name and static shape of the model's single float32 input of rank in ``ranks``."""
    inits = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise UserInputError(f"{path} has {len(inputs)} inputs; edgeprune targets take single-input models",
                             "export the model with one image input")
    tensor = inputs[0].type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
    if tensor.elem_type != _FLOAT:
        raise UserInputError(f"{path}: input {inputs[0].name!r} is not float32 (ONNX type {tensor.elem_type})",
                             "export with a float32 input")
    if not shape or any(v <= 0 for v in shape):
        raise UserInputError(f"{path} has a dynamic input shape {shape}", "export with a static shape")
    if len(shape) not in ranks:
        want = "NCHW (rank 4)" if ranks == (4,) else f"rank {' or '.join(map(str, ranks))}"
        raise UserInputError(f"{path} has input shape {shape}; edgeprune targets take {want} inputs",
                             "export with a static NCHW input")
    return inputs[0].name, shape


# What a runtime compiles: image models (NCHW) and the latency table's micro-models, whose linear
# layers take (N, C). Image data (bench's held-out set, calibration) needs NCHW: ``IMAGE_RANKS``.
RUNTIME_RANKS = (2, 3, 4)
IMAGE_RANKS = (4,)


def read(onnx_path: str | os.PathLike, *, runtime: str | None = None,
         domains: Iterable[str] = STANDARD_DOMAINS, ranks: tuple[int, ...] = RUNTIME_RANKS) -> OnnxInput:
    """The checked model at ``onnx_path`` (see the module invariant); ``runtime`` names who refuses custom ops."""
    path = require_file(onnx_path)
    model = _parse(path)
    check_domains(model, path, domains, runtime)
    check_external_data(model, path)
    model = _check_and_load_data(model, path)
    name, shape = input_spec(model, path, ranks)
    return OnnxInput(path, model, name, shape, [out.name for out in model.graph.output])


def check_precision(precision: str, precisions: Iterable[str], runtime: str) -> None:
    """A precision edgeprune knows but ``runtime`` never offers is UnsupportedPrecision; an unknown one, bad input."""
    from edgeprune.targets.base import PRECISIONS

    precisions = tuple(precisions)
    if precision in precisions:
        return
    if precision in PRECISIONS:
        raise UnsupportedPrecision(f"{runtime} does not offer {precision}", f"choose one of: {', '.join(precisions)}")
    raise UserInputError(f"unknown precision {precision!r} for {runtime}", f"choose one of: {', '.join(precisions)}")


def check_request(onnx_path: str | os.PathLike, precision: str, calib_data: "np.ndarray | None", *, runtime: str,
                  precisions: Iterable[str], min_calib: int | None = None) -> None:
    """The checks every ``compile`` makes first: known precision, existing ONNX, enough int8 calibration data."""
    check_precision(precision, precisions, runtime)
    require_file(onnx_path)
    if precision == "int8" and min_calib:
        _check_count(calib_data, min_calib, "fp32")


def _check_count(calib_data: "np.ndarray | None", min_samples: int, fallback: str) -> None:
    got = 0 if calib_data is None else len(calib_data)
    if got < min_samples:
        raise UserInputError(f"int8 needs at least {min_samples} calibration samples, got {got}",
                             f"pass more calibration data or use --precision {fallback}")


def calibration(calib_data: "np.ndarray | None", input_shape: list[int], *, min_samples: int = 1,
                fallback: str = "fp32") -> np.ndarray:
    """Calibration samples as contiguous float32 (N, *input_shape[1:]), at least ``min_samples`` of them."""
    _check_count(calib_data, min_samples, fallback)
    calib = np.ascontiguousarray(calib_data, dtype=np.float32)
    if calib.ndim != len(input_shape) or list(calib.shape[1:]) != list(input_shape[1:]):
        raise UserInputError(f"calibration data has shape {list(calib.shape)}, the model takes {input_shape}",
                             "pass samples shaped like the model input (N, C, H, W)")
    return calib
