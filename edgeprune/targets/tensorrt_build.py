"""TensorRT engine build: the ONNX each precision is built from, and the builder configuration.

Precision lives in the graph, and the network is created strongly typed, so one
build path serves TensorRT 10.x (JetPack 6) and 11.x (which removed
``BuilderFlag.FP16``/``INT8`` and the implicit int8 calibrator; there the
strongly-typed flag is accepted and ignored):

- fp32: the exported ONNX, unchanged.
- fp16: every float tensor and initializer converted to float16 by ONNX Runtime's
  converter, with float32 model inputs/outputs kept through Cast nodes (the
  caller keeps feeding float32). Ops that overflow fp16's range (max 65504) or
  lose too much on long sums stay float32 (``FP32_OPS``: exp/log/pow, sum-type
  reductions, normalisations whose variance can overflow), plus ORT's own list.
  None of them occurs in a plain CNN (conv/BN/ReLU/pool/linear), which converts
  whole. The converter appends its input Casts after their consumers, so the
  graph is re-sorted topologically before it is checked and saved.
- int8: the symmetric per-channel Q/DQ graph of ``qdq.quantize_qdq``, refused
  unless ``qdq.check_qdq_tensorrt_compatible`` finds no problem.

Invariant: ``build_settings`` is a pure function of the target profile and the
precision; what it returns is everything ``apply_settings`` sets on a real
``trt.IBuilderConfig`` (workspace pool limit in bytes, builder optimization level,
DETAILED profiling verbosity so the inspector can report layer precisions, TF32
off unless the profile allows it) and it never holds a precision flag. Shapes are
static (the exported ONNX's); a dynamic input is refused.

Nothing here imports torch; TensorRT, onnx and onnxruntime are imported inside the
functions that use them.
"""
from __future__ import annotations

import heapq
import os
import shutil
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune.errors import CompileError, UserInputError
from edgeprune.targets import onnx_input
from edgeprune.targets.onnx_input import one_line

DEFAULT_WORKSPACE_MB = 1024
DEFAULT_OPT_LEVEL = 3  # TensorRT's own default; 0-5, higher builds longer and may find faster tactics
MIN_CALIB_SAMPLES = 32
FP16_MAX = 65504.0
FP32_OPS = ("Exp", "Log", "Pow", "Reciprocal", "LogSoftmax", "ReduceSum", "ReduceSumSquare", "ReduceL2",
            "ReduceLogSumExp", "ReduceProd", "LayerNormalization", "InstanceNormalization",
            "GroupNormalization")
_PRECISION_FLAGS = ("FP16", "BF16", "INT8", "FP8", "INT4", "FP4")


@dataclass(frozen=True)
class BuildSettings:
    """Everything the builder config gets; ``precision_flags`` is always empty (precision is in the graph)."""

    precision: str
    workspace_bytes: int
    builder_optimization_level: int = DEFAULT_OPT_LEVEL
    profiling_verbosity: str = "DETAILED"
    strongly_typed: bool = True
    static_shapes: bool = True
    tf32: bool = False
    device: int = 0
    max_aux_streams: int | None = None
    precision_flags: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["precision_flags"] = list(self.precision_flags)
        return data


def _int_option(options: dict[str, Any], key: str, default: int | None, low: int, high: int | None) -> int | None:
    value = options.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise UserInputError(f"TensorRT option {key} = {value!r} in the target profile is invalid",
                             f"set an integer {bound}")
    return value


def build_settings(profile: dict[str, Any] | None, precision: str) -> BuildSettings:
    """The builder configuration for ``precision`` from the profile's ``[options]`` (pure; validates them)."""
    options = dict((profile or {}).get("options") or {})
    tf32 = options.get("tf32", False)
    if not isinstance(tf32, bool):
        raise UserInputError(f"TensorRT option tf32 = {tf32!r} in the target profile is invalid", "set true or false")
    workspace_mb = _int_option(options, "workspace_mb", DEFAULT_WORKSPACE_MB, 1, None)
    return BuildSettings(
        precision=precision,
        workspace_bytes=int(workspace_mb) * (1 << 20),
        builder_optimization_level=int(_int_option(options, "builder_optimization_level", DEFAULT_OPT_LEVEL, 0, 5)),
        tf32=tf32,
        device=int(_int_option(options, "device", 0, 0, None)),
        max_aux_streams=_int_option(options, "max_aux_streams", None, 0, None),
    )


def network_creation_flags(trt) -> int:
    """``1 << STRONGLY_TYPED`` where the enum has it (10.x); 0 where every network is strongly typed."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 1 << int(flag) if flag is not None else 0


def apply_settings(trt, config, settings: BuildSettings) -> None:
    """Set ``settings`` on a real ``trt.IBuilderConfig`` and make sure no precision flag is on."""
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    config.builder_optimization_level = settings.builder_optimization_level
    config.profiling_verbosity = getattr(trt.ProfilingVerbosity, settings.profiling_verbosity)
    tf32 = getattr(trt.BuilderFlag, "TF32", None)
    if tf32 is not None:
        (config.set_flag if settings.tf32 else config.clear_flag)(tf32)
    for name in _PRECISION_FLAGS:  # off by default; cleared so a precision can only come from the graph
        flag = getattr(trt.BuilderFlag, name, None)
        if flag is not None and config.get_flag(flag):
            config.clear_flag(flag)
    if settings.max_aux_streams is not None:
        config.max_aux_streams = settings.max_aux_streams


# ---------------------------------------------------------------- ONNX preparation (no TensorRT needed)

def read_onnx(onnx_path: Path):
    """The checked ONNX model (``onnx_input.read``: a bad file is a one-line UserInputError)."""
    return onnx_input.read(onnx_path, runtime="TensorRT").model


def _subgraph_inputs(node) -> set[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies) read from the enclosing graph."""
    names: set[str] = set()
    for attr in node.attribute:
        for graph in list(attr.graphs) + ([attr.g] if attr.HasField("g") else []):
            for inner in graph.node:
                names.update(inner.input)
                names |= _subgraph_inputs(inner)
    return names


def topological_sort(graph) -> None:
    """Reorder ``graph.node`` so every node follows the producers of its inputs (stable: original order on ties)."""
    nodes = list(graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    deps = [{producer[name] for name in set(node.input) | _subgraph_inputs(node) if name in producer} - {i}
            for i, node in enumerate(nodes)]
    users: dict[int, list[int]] = {i: [] for i in range(len(nodes))}
    for i, dset in enumerate(deps):
        for d in dset:
            users[d].append(i)
    waiting = [len(d) for d in deps]
    ready = [i for i, n in enumerate(waiting) if n == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for user in users[i]:
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, user)
    if len(order) != len(nodes):
        raise CompileError("the fp16 graph has a cycle and cannot be ordered", "use --precision fp32")
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)


def initializer_types(model) -> dict[str, int]:
    """Counts of initializers by element type name ("FLOAT", "FLOAT16", "INT8", ...)."""
    from onnx import TensorProto

    return dict(Counter(TensorProto.DataType.Name(init.data_type) for init in model.graph.initializer))


def _overflowing_values(model) -> int:
    from onnx import TensorProto, numpy_helper

    return sum(int(np.count_nonzero(np.abs(numpy_helper.to_array(init)) > FP16_MAX))
               for init in model.graph.initializer if init.data_type == TensorProto.FLOAT)


def convert_fp16(model) -> tuple[Any, dict[str, Any]]:
    """The fp16 graph of ``model`` (float32 I/O kept through Casts) and what the conversion did."""
    import onnx
    from onnxruntime.transformers import float16

    clamped = _overflowing_values(model)
    blocked = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(FP32_OPS))
    try:
        converted = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=blocked)
        topological_sort(converted.graph)
        onnx.checker.check_model(converted)
    except CompileError:
        raise
    except Exception as exc:  # the converter and checker raise ValueError/AssertionError/ValidationError
        raise CompileError(f"converting the ONNX model to fp16 failed: {one_line(exc)}",
                           "use --precision fp32") from exc
    kept = Counter(node.op_type for node in converted.graph.node if node.op_type in blocked)
    stats = {"converter": "onnxruntime.transformers.float16", "keep_io_types": True,
             "initializers": initializer_types(converted), "kept_fp32_ops": dict(kept),
             "casts": sum(1 for node in converted.graph.node if node.op_type == "Cast"),
             "clamped_to_fp16_range": clamped}
    return converted, stats


def check_calibration(calib_data: np.ndarray | None, input_shape: list[int]) -> np.ndarray:
    return onnx_input.calibration(calib_data, input_shape, min_samples=MIN_CALIB_SAMPLES, fallback="fp16")


def _prepare_int8(onnx_path: Path, calib: np.ndarray, out_path: Path, progress: bool) -> dict[str, Any]:
    from edgeprune.targets import qdq

    return qdq.quantize_checked(onnx_path, out_path, calib, progress=progress, fallback="fp16")


def prepare_onnx(onnx_path: str | os.PathLike, precision: str, calib_data: np.ndarray | None,
                 out_path: str | os.PathLike, input_shape: list[int], progress: bool = False) -> dict[str, Any]:
    """Write the ONNX TensorRT builds ``precision`` from (see the module docstring) to ``out_path``; return stats."""
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if precision == "int8":
        calib = check_calibration(calib_data, input_shape)
        read_onnx(onnx_path)
        return {"graph": "int8 Q/DQ", "qdq": _prepare_int8(onnx_path, calib, out_path, progress)}
    model = read_onnx(onnx_path)
    if precision == "fp32":
        shutil.copyfile(onnx_path, out_path)
        return {"graph": "as exported", "initializers": initializer_types(model)}
    import onnx

    converted, stats = convert_fp16(model)
    onnx.save(converted, str(out_path))
    return {"graph": "fp16", "fp16": stats}


# ---------------------------------------------------------------- building with TensorRT (needs TensorRT + GPU)

@dataclass(frozen=True)
class ParserIssue:
    """One ONNX-parser error as plain data (``node`` is the ONNX node index, -1 when none)."""

    desc: str
    node: int = -1
    node_name: str = ""
    node_operator: str = ""


def parser_error_message(issues: list[ParserIssue], graph) -> str:
    """One line naming the first failing ONNX node (name and op type, from the graph when TensorRT omits them)."""
    if not issues:
        return "TensorRT's ONNX parser rejected the model without saying why"
    first = issues[0]
    name, op = first.node_name, first.node_operator
    if 0 <= first.node < len(graph.node):
        name = name or graph.node[first.node].name or (graph.node[first.node].output or ["?"])[0]
        op = op or graph.node[first.node].op_type
    where = f" at node {name!r} ({op})" if name or op else ""
    more = f" (+{len(issues) - 1} more error(s))" if len(issues) > 1 else ""
    return f"TensorRT's ONNX parser failed{where}: {first.desc.strip()}{more}"


def _issue(error) -> ParserIssue:
    def call(method: str, default):
        fn = getattr(error, method, None)
        return fn() if callable(fn) else default

    return ParserIssue(desc=str(call("desc", "")), node=int(call("node", -1)),
                       node_name=str(call("node_name", "") or ""), node_operator=str(call("node_operator", "") or ""))


def make_logger(trt):
    """A ``trt.ILogger`` that keeps error messages (for CompileError) and echoes warnings to stderr."""

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if int(severity) <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(str(msg))
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                print(f"[TensorRT] {msg}", file=sys.stderr)

    return _Logger()


def build_engine(trt, logger, onnx_path: Path, settings: BuildSettings) -> bytes:
    """Parse ``onnx_path`` into a strongly typed network and build a serialized engine with ``settings``."""
    import onnx

    builder = trt.Builder(logger)
    network = builder.create_network(network_creation_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        issues = [_issue(parser.get_error(i)) for i in range(parser.num_errors)]
        graph = onnx.load(str(onnx_path), load_external_data=False).graph
        raise CompileError(parser_error_message(issues, graph),
                           "simplify or re-export the model with ops TensorRT supports, or choose another target")
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if any(int(d) < 0 for d in tensor.shape):
            raise UserInputError(f"input {tensor.name!r} has a dynamic shape {tuple(tensor.shape)}",
                                 "export with a static shape")
    config = builder.create_builder_config()
    apply_settings(trt, config, settings)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        why = logger.errors[-1] if getattr(logger, "errors", None) else "no error was logged"
        raise CompileError(f"TensorRT could not build a {settings.precision} engine: {why}",
                           "raise workspace_mb in the target profile or use another precision")
    return bytes(serialized)
