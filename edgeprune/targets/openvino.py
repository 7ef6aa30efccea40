"""OpenVINO target: ONNX -> OpenVINO IR (model.xml/.bin), fp32 / fp16 / bf16 / int8 (NNCF PTQ).

Invariant: an artifact's manifest says ``precision = p`` only if the OpenVINO
runtime model, compiled on the artifact's device with the artifact's inference
precision hint, really executes its compute kernels (Convolution,
FullyConnected, MatMul, ...) at ``p``, as read from the per-node ``rt_info``
(``runtimePrecision``) of ``compiled_model.get_runtime_model()``. Anything else
raises ``UnsupportedPrecision`` and, through ``base.staging_dir``, leaves no
output folder behind.

Why the precision hint is stored and always applied: the CPU plugin's default
``INFERENCE_PRECISION_HINT`` follows the hardware. On CPUs with AVX512_BF16
(AMD EPYC, Intel Xeon since Cooper Lake) the default is bf16, so an IR compiled
without a hint runs bf16 kernels, not fp32; and an f16 hint on a CPU without
FP16 in ``OPTIMIZATION_CAPABILITIES`` is executed as bf16 (or f32). The IR
cannot carry the hint (the CPU plugin ignores ``runtime_options`` in the IR for
it), so the manifest records it and ``load``/``inspect`` pass it explicitly;
OpenVINO's ``benchmark_app`` needs ``-infer_precision <hint>`` to run the same
kernels.

fp16 and bf16 are offered only where the device lists ``FP16`` / ``BF16`` in its
``OPTIMIZATION_CAPABILITIES`` (AVX512-FP16 / AVX512_BF16 or AMX on x86; read from
the runtime, never from a CPU name), checked before anything is written and again
on the executed graph; bf16 keeps fp32 weights in the IR (the plugin converts them).

Nothing here imports torch; openvino (and nncf, for int8 only) are imported
inside the functions that need them.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune.errors import CompileError, RuntimeUnavailable, UnsupportedPrecision, UserInputError
from edgeprune.targets import onnx_input
from edgeprune.targets.base import Artifact, open_artifact, staging_dir, write_manifest
from edgeprune.targets.onnx_input import one_line as _one_line

NAME = "openvino"
EXTRA = "openvino"
PRECISIONS = ("fp32", "fp16", "bf16", "int8")

MIN_CALIB_SAMPLES = 32
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")
NNCF_PRESET = "performance"
MODEL_XML, MODEL_BIN = "model.xml", "model.bin"

# Precision requested -> inference precision hint given to the plugin. int8 keeps
# the layers NNCF left unquantized in f32 (not the bf16 the CPU would pick by default).
_HINTS = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "f32"}
# Reduced float precisions -> the OPTIMIZATION_CAPABILITIES entry that says the device runs them natively.
_NATIVE = {"fp16": "FP16", "bf16": "BF16"}
# runtimePrecision of a kernel -> edgeprune's precision name.
_PRECISION_NAMES = {"f32": "fp32", "f16": "fp16", "bf16": "bf16", "u8": "int8", "i8": "int8"}
# Layer types that do the arithmetic that decides a model's precision.
_HEAVY = frozenset({"Convolution", "Deconvolution", "FullyConnected", "MatMul", "GroupConvolution"})
# Layer types that only move or hold data; left out of the executed-precision counts.
_NOT_COMPUTE = frozenset({"Input", "Output", "Const", "Reorder", "Reshape"})


def available() -> tuple[bool, str]:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False, "openvino is not installed"
    return True, ""


def versions() -> dict[str, str]:
    """openvino's build version, and nncf's if installed (read from metadata: importing nncf imports torch)."""
    import openvino

    out = {"openvino": openvino.get_version()}
    if importlib.util.find_spec("nncf") is not None:
        out["nncf"] = importlib.metadata.version("nncf")
    return out


def _core():
    ok, reason = available()
    if not ok:
        raise RuntimeUnavailable(f"runtime openvino is not available here: {reason}",
                                 f"install it with: pip install 'edgeprune[{EXTRA}]'")
    import openvino

    return openvino.Core()


def device_capabilities(device: str = "CPU", core: Any = None) -> dict[str, Any]:
    """``{"device", "name", "capabilities"}`` of an OpenVINO device, e.g. CPU / "AMD EPYC" / ["BF16", ...]."""
    core = core if core is not None else _core()
    if device not in core.available_devices:
        raise RuntimeUnavailable(f"OpenVINO device {device!r} is not available here",
                                 f"available devices: {', '.join(core.available_devices) or 'none'}")
    return {"device": device,
            "name": str(core.get_property(device, "FULL_DEVICE_NAME")),
            "capabilities": [str(c) for c in core.get_property(device, "OPTIMIZATION_CAPABILITIES")]}


def _check_request(onnx_path: Path, precision: str, calib_data: np.ndarray | None) -> None:
    onnx_input.check_request(onnx_path, precision, calib_data, runtime=NAME, precisions=PRECISIONS,
                             min_calib=MIN_CALIB_SAMPLES)


def _device_options(profile: dict[str, Any] | None) -> tuple[str, str]:
    opts = (profile or {}).get("options") or {}
    device = str(opts.get("device", "CPU"))
    hint = str(opts.get("performance_hint", "LATENCY")).upper()
    if hint not in PERFORMANCE_HINTS:
        raise UserInputError(f"unknown OpenVINO performance_hint {hint!r} in the target profile",
                             f"choose one of: {', '.join(PERFORMANCE_HINTS)}")
    return device, hint


def _read_onnx(onnx_path: Path):
    """Read with OpenVINO's ONNX frontend (core.read_model would also try TF/Paddle on a corrupt file)."""
    from openvino.frontend import FrontEndManager

    try:
        frontend = FrontEndManager().load_by_framework("onnx")
        return frontend.convert(frontend.load(str(onnx_path)))
    except Exception as exc:  # OpenVINO raises GeneralFailure/OpConversionFailure/RuntimeError
        raise CompileError(f"OpenVINO cannot read {onnx_path} as ONNX: {_one_line(exc)}",
                           "check that the file is a complete ONNX model (re-export it)") from exc


def _calibration_items(calib_data: np.ndarray, input_shape: list[int]) -> list[np.ndarray]:
    """Calibration samples grouped into model-shaped batches (batch = the model's static batch)."""
    batch = input_shape[0]
    calib = onnx_input.calibration(calib_data, input_shape, min_samples=MIN_CALIB_SAMPLES)
    n = len(calib) // batch
    onnx_input.calibration(calib[:n * batch], input_shape, min_samples=MIN_CALIB_SAMPLES)  # whole batches only
    return [np.ascontiguousarray(calib[i * batch:(i + 1) * batch]) for i in range(n)]


def _quantize(model, items: list[np.ndarray]):
    """NNCF post-training quantization of an OpenVINO model, every item used for statistics."""
    try:
        import nncf
    except ImportError as exc:
        raise RuntimeUnavailable("int8 for openvino needs nncf, which is not installed",
                                 f"install it with: pip install 'edgeprune[{EXTRA}]'") from exc
    try:
        # NNCF draws its progress bar on stdout; stdout carries results (tables, JSON), so send it to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            return nncf.quantize(model, nncf.Dataset(items), preset=nncf.QuantizationPreset.PERFORMANCE,
                                 subset_size=len(items))
    except Exception as exc:  # NNCF wraps many backend failures in different types
        raise CompileError(f"NNCF int8 quantization failed: {_one_line(exc)}", "try --precision fp32") from exc


def _compile_config(inference_hint: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    config = {"INFERENCE_PRECISION_HINT": inference_hint, "NUM_STREAMS": 1}
    config.update(extra or {})
    return config


def _runtime_report(core, model_xml: Path, device: str, inference_hint: str) -> dict[str, Any]:
    """Compile the IR and read which precision each kernel of the runtime model executes in."""
    try:
        compiled = core.compile_model(str(model_xml), device, _compile_config(inference_hint))
    except RuntimeError as exc:
        raise CompileError(f"OpenVINO cannot compile {model_xml.name} for {device}: {_one_line(exc)}",
                           "check the model's operators against OpenVINO's supported list") from exc
    executed: Counter[str] = Counter()
    heavy: Counter[str] = Counter()
    for node in compiled.get_runtime_model().get_ordered_ops():
        info = node.get_rt_info()
        layer_type = info["layerType"].astype(str)
        precision = info["runtimePrecision"].astype(str)
        if layer_type in _NOT_COMPUTE:
            continue
        executed[precision] += 1
        if layer_type in _HEAVY:
            heavy[precision] += 1
    caps = device_capabilities(device, core)
    return {"precision": _decide_precision(heavy or executed),
            "executed": dict(sorted(executed.items())), "kernels": dict(sorted(heavy.items())),
            "inference_precision_hint": compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),
            "device": device, "device_name": caps["name"], "capabilities": caps["capabilities"]}


def _decide_precision(counts: Counter[str]) -> str:
    """int8 if any compute kernel runs u8/i8; otherwise the most common kernel precision."""
    if counts["u8"] + counts["i8"] > 0:
        return "int8"
    if not counts:
        return "unknown"
    top, _ = counts.most_common(1)[0]
    return _PRECISION_NAMES.get(top, top)


def _require_native(precision: str, caps: dict[str, Any]) -> None:
    """fp16/bf16 are offered only where the device lists them in OPTIMIZATION_CAPABILITIES (never hard-coded)."""
    flag = _NATIVE.get(precision)
    if flag is None or flag in caps["capabilities"]:
        return
    raise UnsupportedPrecision(
        f"OpenVINO on this {caps['device']} ({caps['name']}) has no native {flag}: its OPTIMIZATION_CAPABILITIES "
        f"are {', '.join(caps['capabilities'])}", "use --precision fp32 or int8")


def _require_executed(requested: str, report: dict[str, Any]) -> None:
    got = report["precision"]
    if got == requested:
        return
    device, caps = report["device"], report["capabilities"]
    if requested in _NATIVE and _NATIVE[requested] not in caps:
        why = f"{device} lacks native {_NATIVE[requested]}"
    elif requested == "int8":
        why = "no convolution/matmul kernel runs in int8"
    else:
        why = f"the plugin chose {got} kernels"
    raise UnsupportedPrecision(
        f"OpenVINO on this {device} ({report['device_name']}) executes {requested} requests in {got}: "
        f"{why} (capabilities: {', '.join(caps)})",
        "use --precision fp32 or int8" if requested in _NATIVE else "use --precision fp32")


def compile(onnx_path: str | os.PathLike, precision: str, calib_data: np.ndarray | None,
            profile: dict[str, Any] | None, out_dir: str | os.PathLike) -> Artifact:
    """Convert ONNX to an OpenVINO IR at ``precision`` and prove the runtime executes it at that precision."""
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    _check_request(onnx_path, precision, calib_data)
    device, perf_hint = _device_options(profile)
    core = _core()
    import openvino

    _require_native(precision, device_capabilities(device, core))  # fail early: unknown device, no bf16/fp16
    input_shape = onnx_input.read(onnx_path, runtime="OpenVINO").input_shape
    model = _read_onnx(onnx_path)
    items = _calibration_items(calib_data, input_shape) if precision == "int8" else None
    options = {"precision": precision, "device": device, "performance_hint": perf_hint,
               "inference_precision_hint": _HINTS[precision], "compress_to_fp16": precision == "fp16",
               "nncf": None if items is None else {"preset": NNCF_PRESET, "subset_size": len(items),
                                                   "calibration_samples": len(items) * input_shape[0]}}
    with staging_dir(out_dir) as stage:
        if items is not None:
            model = _quantize(model, items)
        openvino.save_model(model, str(stage / MODEL_XML), compress_to_fp16=options["compress_to_fp16"])
        report = _runtime_report(core, stage / MODEL_XML, device, options["inference_precision_hint"])
        _require_executed(precision, report)
        options["executed"] = report["executed"]
        built = write_manifest(stage, runtime=NAME, precision=precision, versions=versions(),
                               input_shape=input_shape, files={"model": MODEL_XML, "weights": MODEL_BIN},
                               options=options, source_onnx=onnx_path)
    return Artifact(out_dir, built.manifest)


def _open(artifact: Artifact | str | os.PathLike) -> Artifact:
    return open_artifact(artifact, NAME)


def _inference_hint(art: Artifact) -> str:
    return art.manifest.get("options", {}).get("inference_precision_hint") or _HINTS[art.precision]


def inspect(artifact: Artifact | str | os.PathLike) -> dict[str, Any]:
    """What the runtime really executes: ``{"precision", "executed": {rt precision: n}, "device", "capabilities", ...}``."""
    art = _open(artifact)
    device = art.manifest.get("options", {}).get("device", "CPU")
    return _runtime_report(_core(), art.file("model"), device, _inference_hint(art))


class OpenVINORunner:
    """One compiled model and one InferRequest reused by every ``run``.

    ``run`` copies the input into the request's own input tensor and copies the
    outputs out, so results never alias the next call's buffers; this costs a few
    microseconds against ~30-40 us for ``InferRequest.infer(dict)``'s wrapping.
    """

    def __init__(self, compiled, input_shape: list[int]):
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self._input = self._request.get_input_tensor(0)
        self._n_outputs = len(compiled.outputs)
        self.input_shape = tuple(int(d) for d in input_shape)

    def op_ms(self, x: np.ndarray) -> dict[str, float]:
        """Per-node time of one run of ``x`` inside the whole model (node name -> ms, executed nodes only), as the
        plugin measured it; empty unless the runner was loaded with ``perf_count=True``."""
        self.run(x)
        return {p.node_name: p.real_time.total_seconds() * 1e3 for p in self._request.get_profiling_info()
                if p.status == p.Status.EXECUTED}

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        x = np.asarray(x)
        if x.shape != self.input_shape:
            batch = f"batch {x.shape[0]} vs {self.input_shape[0]}; " if x.ndim == len(self.input_shape) else ""
            raise UserInputError(f"input shape {list(x.shape)} does not match the artifact's static input "
                                 f"{list(self.input_shape)} ({batch}the artifact was compiled for a fixed shape)",
                                 f"pass arrays shaped {list(self.input_shape)}")
        np.copyto(self._input.data, x)
        self._request.infer()
        return [self._request.get_output_tensor(i).data.copy() for i in range(self._n_outputs)]


def load(artifact: Artifact | str | os.PathLike, threads: int, perf_count: bool = False) -> OpenVINORunner:
    """Compile the IR with ``threads`` inference threads, one stream, and the artifact's precision hint;
    ``perf_count``: also have the plugin time every node (``OpenVINORunner.op_ms``; it adds a little to each run)."""
    art = _open(artifact)
    if int(threads) < 0:
        raise UserInputError(f"threads must be >= 0 (0 = runtime default), got {threads}")
    opts = art.manifest.get("options", {})
    device = opts.get("device", "CPU")
    core = _core()
    device_capabilities(device, core)
    config = _compile_config(_inference_hint(art), {"INFERENCE_NUM_THREADS": int(threads),
                                                    "PERFORMANCE_HINT": opts.get("performance_hint", "LATENCY"),
                                                    **({"PERF_COUNT": True} if perf_count else {})})
    try:
        compiled = core.compile_model(str(art.file("model")), device, config)
    except RuntimeError as exc:
        raise CompileError(f"OpenVINO cannot compile {art.file('model')}: {_one_line(exc)}",
                           "rebuild the artifact with this OpenVINO version") from exc
    return OpenVINORunner(compiled, art.input_shape)
