"""ONNX Runtime target (CPU execution provider): the reference runner, fp32 and int8 (explicit Q/DQ).

Invariant: an artifact is a folder holding ``model.onnx`` that ONNX Runtime's CPU
provider has opened, plus the manifest written last. Its manifest says
``precision = "int8"`` only if every Conv/Gemm/MatMul of that graph reads its
data and weight through DequantizeLinear nodes with per-channel int8 weights --
activations uint8 with a zero point (``int8_form = "cpu"``, the default) or, with
``int8_form = "tensorrt"``, symmetric int8 as TensorRT takes them
(``qdq.check_qdq_tensorrt_compatible`` finds no problem) -- and ORT, at the artifact's optimization level, really fuses
them into integer kernels (QLinearConv ...; levels "disable"/"basic" would
run the Q/DQ graph in fp32 arithmetic); anything else raises and, through
``base.staging_dir``, leaves no output folder behind. ``inspect`` re-reads the precision from the graph
itself and reports, under ``executed``, the integer and float compute kernels
of the graph ORT runs after its optimizations.

The graph optimization level comes from the target profile's
``options.graph_optimization_level`` ("disable", "basic", "extended", "layout",
"all"; default "all"), is recorded in the manifest and applied by ``load``.
Why "cpu" is the default int8 form (measured, ``bench/results/int8.md``): in the
symmetric TensorRT form every ReLU stays between its Conv and QuantizeLinear, so ORT
fuses only part of the convolutions into QLinearConv and runs the rest as fp32 Conv
wrapped in DequantizeLinear/QuantizeLinear -- slower than plain fp32 (ResNet-20: 10
of 21 convs fused, 2.3x the fp32 latency); the uint8 form folds each ReLU into its
quantization range and all 21 fuse.
Nothing here imports torch; onnxruntime and onnx are imported when used.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune.errors import CompileError, RuntimeUnavailable, UnsupportedPrecision, UserInputError
from edgeprune.targets import onnx_input
from edgeprune.targets.base import Artifact, open_artifact, staging_dir, write_manifest
from edgeprune.targets.onnx_input import one_line as _one_line

NAME = "onnxruntime"
EXTRA = "onnxruntime"
PRECISIONS = ("fp32", "int8")

MIN_CALIB_SAMPLES = 32
MODEL_ONNX = "model.onnx"
PROVIDER = "CPUExecutionProvider"
# Operator domains ORT's CPU provider implements (its contrib ops live in com.microsoft).
DOMAINS = frozenset({*onnx_input.STANDARD_DOMAINS, "ai.onnx.ml", "com.microsoft"})
OPT_LEVELS = ("disable", "basic", "extended", "layout", "all")
INT8_FORMS = ("cpu", "tensorrt")
_ORT_LEVEL_NAMES = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
                    "layout": "ORT_ENABLE_LAYOUT", "all": "ORT_ENABLE_ALL"}
# Operators ORT's CPU provider runs with integer arithmetic once it has fused the Q/DQ pairs.
_INT_KERNELS = frozenset({"QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger",
                          "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QLinearAdd"})
_FLOAT_KERNELS = frozenset({"Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul", "NchwcConv",
                            "ConvTranspose"})


def available() -> tuple[bool, str]:
    if importlib.util.find_spec("onnxruntime") is None:
        return False, "onnxruntime is not installed"
    if importlib.util.find_spec("onnx") is None:
        return False, "onnx is not installed"
    import onnxruntime as ort

    if PROVIDER not in ort.get_available_providers():
        return False, f"onnxruntime here lacks the {PROVIDER}"
    return True, ""


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime as ort

    return {"onnxruntime": ort.__version__, "onnx": onnx.__version__}


def _ort():
    ok, reason = available()
    if not ok:
        raise RuntimeUnavailable(f"runtime onnxruntime is not available here: {reason}",
                                 f"install it with: pip install 'edgeprune[{EXTRA}]'")
    import onnxruntime as ort

    return ort


def _opt_level(profile: dict[str, Any] | None) -> str:
    level = str(((profile or {}).get("options") or {}).get("graph_optimization_level", "all")).lower()
    return _known_level(level, "graph_optimization_level", " in the target profile")


def _known_level(level: str, name: str = "graph optimisation level", where: str = "") -> str:
    """``level`` if it is one of ``OPT_LEVELS``, else a UserInputError naming them."""
    if level not in OPT_LEVELS:
        raise UserInputError(f"unknown ONNX Runtime {name} {level!r}{where}", f"choose one of: {', '.join(OPT_LEVELS)}")
    return level


def _check_request(onnx_path: Path, precision: str, calib_data: np.ndarray | None) -> None:
    if precision == "fp16":
        raise UnsupportedPrecision("ONNX Runtime CPU has no fp16 kernels for this target; use fp32 or int8")
    onnx_input.check_request(onnx_path, precision, calib_data, runtime=NAME, precisions=PRECISIONS,
                             min_calib=MIN_CALIB_SAMPLES)


def _session(model_path: Path, level: str, threads: int, optimized_path: Path | None = None):
    ort = _ort()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _ORT_LEVEL_NAMES[level])
    opts.log_severity_level = 3
    if optimized_path is not None:
        opts.optimized_model_filepath = str(optimized_path)
    try:
        return ort.InferenceSession(str(model_path), sess_options=opts, providers=[PROVIDER])
    except Exception as exc:  # onnxruntime raises Fail/InvalidGraph/NotImplemented/RuntimeException
        raise CompileError(f"ONNX Runtime cannot load {model_path.name}: {_one_line(exc)}",
                           "check the model's operators and opset against this onnxruntime version") from exc


def _executed_kernels(model_path: Path, level: str) -> dict[str, int]:
    """Counts of integer vs float compute kernels in the graph ORT runs after its optimizations."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="edgeprune-ort-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        _session(model_path, "extended" if level in ("layout", "all") else level, 1, optimized)
        graph = onnx.load(str(optimized), load_external_data=False).graph
    ops = Counter(node.op_type for node in graph.node)
    return {"int8": sum(n for op, n in ops.items() if op in _INT_KERNELS),
            "fp32": sum(n for op, n in ops.items() if op in _FLOAT_KERNELS)}


def _graph_report(model_path: Path, level: str) -> dict[str, Any]:
    from edgeprune.targets import qdq

    summary = qdq.summarize_graph(model_path)
    summary["executed"] = _executed_kernels(model_path, level)
    summary["graph_optimization_level"] = level
    return summary


def _int8_form(profile: dict[str, Any] | None) -> str:
    form = str(((profile or {}).get("options") or {}).get("int8_form", "cpu")).lower()
    if form not in INT8_FORMS:
        raise UserInputError(f"unknown ONNX Runtime int8_form {form!r} in the target profile",
                             f"choose one of: {', '.join(INT8_FORMS)}")
    return form


VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})  # /proc/cpuinfo names of int8 dot-product units


def int8_reduce_range(profile: dict[str, Any] | None, machine: str | None = None,
                      flags: frozenset[str] | None = None) -> tuple[bool, str]:
    """(quantize the CPU form's weights to 7 bits?, why) for the host that runs it.

    On x86 without VNNI, ONNX Runtime's int8 kernels multiply u8 activations by s8 weights in pairs summed into
    int16 (VPMADDUBSW), which saturates; its quantization guide's remedy is ``reduce_range`` (7-bit weights). On a
    2-core AMD EPYC with AVX2 only, ResNet-18 @96 on the Fashion-MNIST test set went from 92.28% (fp32) to 90.15%
    top-1 in the CPU form with 8-bit weights and kept 92.26% with 7-bit ones (bench/RESULTS.md §1). CPUs with VNNI (or
    AMX) and ARM's dot-product kernels accumulate in int32 and keep the full 8 bits. The profile's
    ``options.int8_reduce_range`` (``auto``, the default, or true/false) overrides the detection."""
    import platform

    from edgeprune.measure.env import cpu_flags

    setting = ((profile or {}).get("options") or {}).get("int8_reduce_range", "auto")
    setting = {"true": True, "false": False}.get(str(setting).lower(), setting) if isinstance(setting, str) else setting
    if isinstance(setting, bool):
        return setting, f"set by the target profile (int8_reduce_range: {str(setting).lower()})"
    if str(setting).lower() != "auto":
        raise UserInputError(f"unknown ONNX Runtime int8_reduce_range {setting!r} in the target profile",
                             "use auto, true or false")
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False, f"{machine} CPU: int8 kernels accumulate without int16 saturation"
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return True, "x86 CPU whose flags could not be read: 7-bit weights, in case it has no VNNI"
    have = sorted(VNNI_FLAGS & flags)
    if have:
        return False, f"x86 CPU with {', '.join(have)}: int8 dot products accumulate in int32"
    return True, ("x86 CPU without VNNI: ONNX Runtime's u8 x s8 kernels sum pairs into int16 and saturate, so "
                  "the weights use 7 bits (its reduce_range)")


def _build_int8(onnx_path: Path, calib: np.ndarray, out_path: Path, progress: bool, form: str,
                reduce_range: bool) -> dict[str, Any]:
    from edgeprune.targets import qdq

    if form == "tensorrt":  # for TensorRT, whose int8 accumulates in int32: the full 8 bits
        return qdq.quantize_checked(onnx_path, out_path, calib, progress=progress, fallback="fp32")
    return qdq.quantize_qdq(onnx_path, out_path, calib, per_channel=True, progress=progress,
                            symmetric_activations=False, reduce_range=reduce_range)


def _require_precision(requested: str, report: dict[str, Any]) -> None:
    if report["precision"] != requested:
        raise UnsupportedPrecision(
            f"ONNX Runtime {requested} request produced a {report['precision']} graph "
            f"({report['quantized_ops']} quantized, {report['float_ops']} float compute ops)",
            "use --precision fp32")
    if requested == "int8" and report["executed"]["int8"] == 0:
        raise UnsupportedPrecision(
            f"ONNX Runtime at graph_optimization_level {report['graph_optimization_level']!r} runs the Q/DQ graph "
            "with fp32 arithmetic (it fuses Q/DQ into integer kernels only from level 'extended')",
            "set graph_optimization_level to 'extended' or 'all', or use --precision fp32")


def compile(onnx_path: str | os.PathLike, precision: str, calib_data: np.ndarray | None,
            profile: dict[str, Any] | None, out_dir: str | os.PathLike, progress: bool = False) -> Artifact:
    """Copy (fp32) or Q/DQ-quantize (int8) the ONNX model into an artifact ORT has proven it can run."""
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    _check_request(onnx_path, precision, calib_data)
    level = _opt_level(profile)
    form = _int8_form(profile) if precision == "int8" else None
    _ort()
    input_shape = onnx_input.read(onnx_path, runtime="ONNX Runtime", domains=DOMAINS).input_shape
    calib = onnx_input.calibration(calib_data, input_shape, min_samples=MIN_CALIB_SAMPLES) \
        if precision == "int8" else None
    options: dict[str, Any] = {"precision": precision, "provider": PROVIDER, "graph_optimization_level": level,
                               "int8_form": form}
    with staging_dir(out_dir) as stage:
        model_path = stage / MODEL_ONNX
        if calib is None:
            shutil.copyfile(onnx_path, model_path)
        else:
            reduce, why = int8_reduce_range(profile) if form == "cpu" else (False, "TensorRT form: full 8 bits")
            options["int8_reduce_range"] = {"on": reduce, "why": why}
            options["qdq"] = _build_int8(onnx_path, calib, model_path, progress, form, reduce)
        _session(model_path, level, 1)
        report = _graph_report(model_path, level)
        _require_precision(precision, report)
        options["graph"] = {k: report[k] for k in ("qdq_nodes", "quantized_ops", "float_ops", "executed")}
        built = write_manifest(stage, runtime=NAME, precision=precision, versions=versions(),
                               input_shape=input_shape, files={"model": MODEL_ONNX}, options=options,
                               source_onnx=onnx_path)
    return Artifact(out_dir, built.manifest)


def _open(artifact: Artifact | str | os.PathLike) -> Artifact:
    return open_artifact(artifact, NAME)


def _artifact_level(art: Artifact) -> str:
    return _opt_level({"options": {"graph_optimization_level":
                                   art.manifest.get("options", {}).get("graph_optimization_level", "all")}})


def inspect(artifact: Artifact | str | os.PathLike) -> dict[str, Any]:
    """Read the artifact's graph: ``{"precision", "qdq_nodes", "quantized_ops", "float_ops", "executed", ...}``."""
    art = _open(artifact)
    return _graph_report(art.file("model"), _artifact_level(art))


class ORTRunner:
    """One InferenceSession (CPU provider) reused by every ``run``; input shape is static."""

    def __init__(self, session, input_shape: list[int]):
        self.session = session
        self._input_name = session.get_inputs()[0].name
        self.input_shape = tuple(int(d) for d in input_shape)

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.shape != self.input_shape:
            batch = f"batch {x.shape[0]} vs {self.input_shape[0]}; " if x.ndim == len(self.input_shape) else ""
            raise UserInputError(f"input shape {list(x.shape)} does not match the artifact's static input "
                                 f"{list(self.input_shape)} ({batch}the artifact was compiled for a fixed shape)",
                                 f"pass arrays shaped {list(self.input_shape)}")
        return self.session.run(None, {self._input_name: x})


def load(artifact: Artifact | str | os.PathLike, threads: int, level: str | None = None) -> ORTRunner:
    """An InferenceSession with ``threads`` intra-op threads (0 = ORT default), 1 inter-op, sequential.

    ``level``: the graph optimisation level, the artifact's own by default; ``"disable"`` runs an int8 artifact op
    by op, each Q/DQ node in float as written (what the artifact means, without ONNX Runtime's fused kernels)."""
    art = _open(artifact)
    if int(threads) < 0:
        raise UserInputError(f"threads must be >= 0 (0 = runtime default), got {threads}")
    level = _artifact_level(art) if level is None else _known_level(level)
    return ORTRunner(_session(art.file("model"), level, int(threads)), art.input_shape)
