"""MNN target: ONNX -> ``model.mnn`` with MNN's converter (fp32, fp16) and quantizer (int8).

Invariant: ``inspect`` reports what MNN on *this host* really executes, read from
the runtime (op types of a real run; a "normal" vs "low" probe) and from the file
(the converter's dump of the .mnn), never from the manifest; ``load`` never runs an
fp16 artifact in fp32 unless told to; a failed compile leaves no output folder.

- fp32: ``mnnconvert -f ONNX --modelFile X --MNNModel model.mnn --bizCode edgeprune``,
  run at MNN precision mode "normal" (fp32 on every CPU).
- fp16: the same plus ``--fp16`` (weights stored as half floats, widened to fp32 at
  load: smaller file only) and mode "low" recorded in the manifest. fp16
  *arithmetic* comes from mode "low" on CPUs that have it (ARMv8.2+); elsewhere MNN
  silently runs "low" in fp32. Measured here (x86 AMD EPYC, MNN 3.6.1 reporting
  ``fp16:0``): "low" and "low_bf16" outputs are bit-identical to "normal", at the
  same speed (tiny test CNN, 71 us both): fp32 arithmetic. So an fp16 artifact is
  built on any host as a deliverable for ARM; ``inspect`` reports this host's
  ``arithmetic``; and
  ``load`` probes the host (bit-identical outputs = fp32) and raises
  ``UnsupportedPrecision`` there unless ``allow_emulated=True``, so no measurement
  reports fp32 speed as fp16. A "low" that changes the outputs on a CPU without
  MNN's fp16 flag (bf16, say) is reported as arithmetic "reduced" and not refused.
- int8: fp32 conversion with an NC4HW4 input (``--keepInputFormat=0``: the first convolution
  reads the float input and stays float, so the model input is not KL-clipped; see
  ``mnn_tools``), then ``mnnquant`` (KL features, MAX_ABS weights) on >= 32
  samples written as 8-bit images (1- or 3-channel inputs; see ``mnn_tools``). int8
  is detected at run time: MNN names each op executing on int8 tensors
  ``"<type> [ DT_INT8 ]"`` in its per-op callback, and ``inspect`` counts the
  convolution/matmul ones; the file dump adds the weight storage (``quanParameter``
  type 3 = fp16, others = quantized ints) and the tensors with int8 ``quantInfo``.

The converter and quantizer run as subprocesses (``mnn_tools``; not the wheel's
console scripts, which install packages and upload usage logs); the manifest
records the equivalent ``mnnconvert`` command. MNN's C++ banners (``The device
supports: ...``, ``MNN use low precision``) are sent to stderr, keeping a caller's
stdout (the measurement worker's JSON) clean. Nothing here imports torch; MNN is
imported inside the functions that run it.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edgeprune.errors import CompileError, RuntimeUnavailable, UnsupportedPrecision, UserInputError
from edgeprune.targets import mnn_tools as tools
from edgeprune.targets import onnx_input
from edgeprune.targets.base import Artifact, open_artifact, staging_dir, write_manifest

NAME = "mnn"
EXTRA = "mnn"
PRECISIONS = ("fp32", "fp16", "int8")

MIN_CALIB_SAMPLES = 32
MODEL_FILE = "model.mnn"
# Requested precision -> MNN BackendConfig precision mode used to run it.
_MODES = {"fp32": "normal", "fp16": "low", "int8": "normal"}
# Ops whose arithmetic decides a model's precision.
_COMPUTE_OPS = frozenset({"Convolution", "ConvolutionDepthwise", "Deconvolution", "DeconvolutionDepthwise",
                          "MatMul", "BatchMatMul", "ConvInt8", "DepthwiseConvInt8", "InnerProduct"})


def available() -> tuple[bool, str]:
    for module in ("MNN", "_tools"):
        if importlib.util.find_spec(module) is None:
            return False, f"the MNN python package (module {module}) is not installed"
    return True, ""


def versions() -> dict[str, str]:
    """The MNN wheel's version, from package metadata (importing MNN would print its CPU banner)."""
    return {"mnn": importlib.metadata.version("MNN")}


def _require() -> None:
    ok, reason = available()
    if not ok:
        raise RuntimeUnavailable(f"runtime mnn is not available here: {reason}",
                                 f"install it with: pip install 'edgeprune[{EXTRA}]'")


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Point file descriptor 1 at stderr while MNN's C++ code may print, flushing C stdio before restoring."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # no usable fd 1/2: nothing to protect
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            ctypes.CDLL(None).fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


def _mnn():
    _require()
    with _stdout_to_stderr():
        import MNN
    return MNN


def cpu_features() -> dict[str, bool]:
    """MNN's own CPU feature report (``The device supports: i8sdot:0, fp16:0, ...``), read from a fresh process."""
    try:
        res = subprocess.run([*tools.child_python(), "-c", "import MNN"], capture_output=True, text=True,
                             timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    line = next((ln for ln in (res.stdout + res.stderr).splitlines() if "device supports" in ln), "")
    return {name: value == "1" for name, value in re.findall(r"(\w+):\s*(\d)", line.split("supports", 1)[-1])}


# ----------------------------------------------------------------------------- runtime
class MNNRunner:
    """One MNN session reused by every ``run``, with host tensors allocated once.

    ``run`` copies the input into a host NCHW tensor, lets MNN convert it into the
    session's input (layout, int8 quantization), and copies every output back into
    fresh numpy arrays, so results never alias the next call. A batch that is a
    multiple of the artifact's static batch runs as consecutive static batches.
    """

    def __init__(self, mnn, model: Path, mode: str, threads: int, input_shape: list[int], outputs: list[str]):
        self._mnn = mnn
        self.input_shape = tuple(int(d) for d in input_shape)
        config: dict[str, Any] = {"backend": "CPU", "precision": mode}
        if threads > 0:
            config["numThread"] = int(threads)
        with _stdout_to_stderr():
            self._interp = mnn.Interpreter(str(model))
            self._session = self._interp.createSession(config)
        self._input = self._interp.getSessionInput(self._session)
        self._host_in = self._host(self.input_shape)
        names = outputs or sorted(self._interp.getSessionOutputAll(self._session))
        self._outputs = [self._interp.getSessionOutput(self._session, name) for name in names]
        self._host_out = [self._host(t.getShape()) for t in self._outputs]

    def _host(self, shape) -> Any:
        shape = tuple(int(d) for d in shape)
        return self._mnn.Tensor(shape, self._mnn.Halide_Type_Float, np.zeros(shape, np.float32),
                                self._mnn.Tensor_DimensionType_Caffe)

    def _run_static(self, x: np.ndarray, callbacks: tuple | None = None) -> list[np.ndarray]:
        np.copyto(self._host_in.getNumpyData(), x)
        self._input.copyFrom(self._host_in)
        if callbacks is None:
            self._interp.runSession(self._session)
        else:
            self._interp.runSessionWithCallBackInfo(self._session, *callbacks)
        for tensor, host in zip(self._outputs, self._host_out):
            tensor.copyToHostTensor(host)
        return [host.getNumpyData().copy() for host in self._host_out]

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        x = np.asarray(x, dtype=np.float32)
        batch = self.input_shape[0]
        if x.shape == self.input_shape:
            return self._run_static(x)
        if x.ndim != len(self.input_shape) or x.shape[1:] != self.input_shape[1:] or x.shape[0] % batch:
            raise UserInputError(f"input shape {list(x.shape)} does not match the artifact's static input "
                                 f"{list(self.input_shape)}", f"pass arrays shaped [k*{batch}, "
                                 f"{', '.join(map(str, self.input_shape[1:]))}]")
        parts = [self._run_static(x[i:i + batch]) for i in range(0, len(x), batch)]
        return [np.concatenate(outs) for outs in zip(*parts)]

    def op_ms(self, x: np.ndarray) -> dict[str, float]:
        """Per-op time of one run of ``x`` inside the whole model (op name -> ms), timed between MNN's before and
        after callbacks (each adds a few microseconds)."""
        import time

        times: dict[str, float] = {}
        start = [0.0]

        def before(tensors, info) -> bool:
            start[0] = time.perf_counter()
            return True

        def after(tensors, info) -> bool:
            name = info.getName()
            times[name] = times.get(name, 0.0) + 1e3 * (time.perf_counter() - start[0])
            return True

        self._run_static(x, (before, after))
        return times

    def memory_mb(self) -> float:
        """The session's memory in MB as MNN reports it (weights as the session holds them, after its own
        transforms, plus activation buffers)."""
        return float(self._interp.getSessionInfo(self._session, 0))  # 0: MNN's Session_Memory

    def op_types(self, x: np.ndarray) -> Counter[str]:
        """Executed op types of one run, e.g. ``{"FloatToInt8 [ DT_INT8 ]": 2, "Convolution [ DT_INT8 ]": 4}``."""
        seen: Counter[str] = Counter()

        def before(tensors, info) -> bool:
            seen[info.getType().strip()] += 1
            return True

        self._run_static(x, (before, lambda tensors, info: True))
        return seen


def _probe_input(input_shape: list[int]) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)


def _compute_kernels(ops: Counter[str]) -> dict[str, int]:
    """Compute ops by the element type they run on: ``{"int8": n, "float": m}``."""
    kernels = {"int8": 0, "float": 0}
    for name, count in ops.items():
        base = name.split("[", 1)[0].strip()
        if base in _COMPUTE_OPS:
            kernels["int8" if "DT_INT8" in name or base.endswith("Int8") else "float"] += count
    return kernels


def _reduced_precision_differs(mnn, model: Path, input_shape: list[int], outputs: list[str]) -> bool:
    """Whether mode "low" changes the outputs of mode "normal" (bit-identical means fp32 arithmetic)."""
    x = _probe_input(input_shape)
    normal = MNNRunner(mnn, model, "normal", 1, input_shape, outputs).run(x)
    low = MNNRunner(mnn, model, "low", 1, input_shape, outputs).run(x)
    return not all(np.array_equal(a, b) for a, b in zip(normal, low))


def _report(model: Path, input_shape: list[int], outputs: list[str], mode: str) -> dict[str, Any]:
    """What this host executes for ``model`` at ``mode``, read from the runtime and the file."""
    mnn = _mnn()
    ops = MNNRunner(mnn, model, mode, 1, input_shape, outputs).op_types(_probe_input(input_shape))
    kernels = _compute_kernels(ops)
    report = {**tools.weights_report(model), "runtime_precision_mode": mode, "compute_ops": kernels,
              "ops": dict(sorted(ops.items()))}
    if kernels["int8"] > 0:
        report["arithmetic"] = "int8"
    elif mode == "low" and _reduced_precision_differs(mnn, model, input_shape, outputs):
        report["arithmetic"] = "fp16" if cpu_features().get("fp16") else "reduced"
    else:
        report["arithmetic"] = "fp32"
    report["precision"] = report["arithmetic"]
    return report


# ----------------------------------------------------------------------------- protocol
def _check_request(onnx_path: Path, precision: str, calib_data: np.ndarray | None) -> None:
    onnx_input.check_request(onnx_path, precision, calib_data, runtime=NAME, precisions=PRECISIONS,
                             min_calib=MIN_CALIB_SAMPLES)


def _require_built(precision: str, report: dict[str, Any]) -> None:
    """The file really holds what was asked for (runtime arithmetic is the host's business, see ``load``)."""
    if precision == "int8" and report["compute_ops"]["int8"] == 0:
        raise CompileError("mnnquant produced a model with no int8 convolution/matmul kernels "
                           f"(compute ops: {report['compute_ops']})", "use --precision fp32")
    # "none": a model without weights (the latency table's identity micro-model) has nothing to store
    if precision in ("fp32", "fp16") and report["weights"] not in (precision, "none"):
        raise CompileError(f"mnnconvert stored {report['weight_storage']} weights for a {precision} request",
                           "report this MNN version; use --precision fp32")


def compile(onnx_path: str | os.PathLike, precision: str, calib_data: np.ndarray | None,
            profile: dict[str, Any] | None, out_dir: str | os.PathLike) -> Artifact:
    """Convert ONNX to ``model.mnn`` at ``precision`` (fp16: an artifact for CPUs with fp16 arithmetic)."""
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    _check_request(onnx_path, precision, calib_data)
    settings = tools.int8_settings(profile) if precision == "int8" else None
    spec = onnx_input.read(onnx_path, runtime="MNN")
    input_shape, outputs = spec.input_shape, spec.outputs
    if settings:
        calib_data = onnx_input.calibration(calib_data, input_shape, min_samples=MIN_CALIB_SAMPLES)
    _require()
    with staging_dir(out_dir) as stage, tempfile.TemporaryDirectory(prefix="edgeprune-mnn-") as tmp:
        work, model = Path(tmp), stage / MODEL_FILE
        first = work / "float.mnn" if precision == "int8" else model
        command = tools.convert(onnx_path, first, fp16=precision == "fp16",
                                keep_input_format=settings["keep_input_format"] if settings else True)
        quant = None
        if settings:  # quantized inside ``work``, where mnnquant's side files stay
            quant = tools.quantize(first, work / MODEL_FILE, calib_data, input_shape, work, settings)
            shutil.move(work / MODEL_FILE, model)
        report = _report(model, input_shape, outputs, _MODES[precision])
        _require_built(precision, report)
        options = {"precision": precision, "runtime_precision_mode": _MODES[precision],
                   "weights": report["weights"], "outputs": outputs, "convert_command": command,
                   "quantize": quant, "compute_ops": report["compute_ops"],
                   "intended_arithmetic": {"fp16": "fp16 (ARMv8.2+ CPUs)"}.get(precision, precision),
                   "build_host_arithmetic": report["arithmetic"]}
        built = write_manifest(stage, runtime=NAME, precision=precision, versions=versions(),
                               input_shape=input_shape, files={"model": MODEL_FILE}, options=options,
                               source_onnx=onnx_path)
    return Artifact(out_dir, built.manifest)


def _open(artifact: Artifact | str | os.PathLike) -> Artifact:
    return open_artifact(artifact, NAME)


def _mode(art: Artifact) -> str:
    return art.manifest.get("options", {}).get("runtime_precision_mode") or _MODES[art.precision]


def inspect(artifact: Artifact | str | os.PathLike) -> dict[str, Any]:
    """``{"precision", "arithmetic", "weights", "runtime_precision_mode", "compute_ops", ...}`` on this host.

    ``precision``/``arithmetic`` is what this host's MNN executes (int8 kernels, or
    fp16/"reduced" only if mode "low" changes the outputs); an fp16 artifact on a CPU
    without fp16 arithmetic reports ``"fp32"`` with ``"fp16_emulated": True``.
    """
    art = _open(artifact)
    report = _report(art.file("model"), art.input_shape, art.manifest.get("options", {}).get("outputs") or [],
                     _mode(art))
    report["fp16_emulated"] = art.precision == "fp16" and report["arithmetic"] == "fp32"
    report["cpu_features"] = cpu_features()
    return report


def load(artifact: Artifact | str | os.PathLike, threads: int, *, allow_emulated: bool = False) -> MNNRunner:
    """A runner with ``threads`` MNN threads (0 = MNN's default) at the artifact's precision mode.

    An fp16 artifact on a host whose MNN runs mode "low" in fp32 raises
    ``UnsupportedPrecision`` unless ``allow_emulated`` (then it runs, in fp32). For
    fp16 artifacts the host probe (one "normal" and one "low" run) is part of load.
    """
    art = _open(artifact)
    if int(threads) < 0:
        raise UserInputError(f"threads must be >= 0 (0 = runtime default), got {threads}")
    mnn, mode = _mnn(), _mode(art)
    outputs = art.manifest.get("options", {}).get("outputs") or []
    if mode == "low" and not allow_emulated and not _reduced_precision_differs(mnn, art.file("model"),
                                                                               art.input_shape, outputs):
        raise UnsupportedPrecision(
            f"MNN on this CPU runs the fp16 artifact {art.path} in fp32 (precision 'low' gives bit-identical "
            "fp32 results: no fp16 arithmetic here), so it would not measure fp16",
            "run it on an ARMv8.2+ device, or load with allow_emulated=True for a functional check")
    return MNNRunner(mnn, art.file("model"), mode, int(threads), art.input_shape, outputs)
