"""TensorRT target (NVIDIA GPUs, Jetson Orin): fp32, fp16 and int8 engines, built strongly typed.

Precision is expressed in the ONNX graph (``tensorrt_build``: the exported graph
for fp32, an fp16 conversion with float32 I/O, a symmetric per-channel Q/DQ graph
for int8) and the network is created strongly typed, with no FP16/INT8 builder
flag, so the same path builds on TensorRT 10.x (JetPack 6) and 11.x. TensorRT 8.x
(JetPack 5, the last for Jetson Xavier) has no strongly typed networks and is
reported as unavailable.

An engine is specific to the GPU model and the TensorRT version that built it, so
``compile`` must run *on the target device* (the remote-device feature pushes the
prepared ONNX there and builds it there). ``load`` refuses an engine whose
recorded compute capability or TensorRT version differs from this machine's.

Invariant: an artifact is a folder holding ``model.engine`` (the serialized
engine: the one file the manifest lists, so the artifact's size is the engine's),
its companions ``model.onnx`` (the graph it was built from) and ``layers.json``
(the engine inspector's report at build time), hashed under the manifest's
``options.companions``, and the manifest written last; it
exists only if the engine inspector, read after the build, shows the requested
precision really executes (``tensorrt_inspect.precision_problem``) -- otherwise
``UnsupportedPrecision`` is raised and, through ``base.staging_dir``, nothing is
left behind. ``inspect`` re-reads the precision from the engine itself.

Neither torch nor TensorRT nor any CUDA binding is imported at module import.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune.errors import CompileError, RuntimeUnavailable, UnsupportedPrecision, UserInputError
from edgeprune.targets import tensorrt_build as build
from edgeprune.targets import tensorrt_inspect as trt_inspect
from edgeprune.targets import tensorrt_runner as runner
from edgeprune.targets import onnx_input
from edgeprune.targets.base import Artifact, open_artifact, sha256_file, staging_dir, write_manifest

NAME = "tensorrt"
EXTRA = None  # never a pip extra: TensorRT comes from JetPack or NVIDIA's wheels
PRECISIONS = ("fp32", "fp16", "int8")
MIN_TENSORRT_MAJOR = 10
MODEL_ENGINE = "model.engine"
MODEL_ONNX = "model.onnx"
LAYERS_JSON = "layers.json"
INSTALL_HINT = ("TensorRT is not installed: on Jetson it comes with JetPack 6; elsewhere install NVIDIA's "
                "tensorrt wheels (pip install tensorrt)")


def version_problem(version: str) -> str | None:
    """Why TensorRT ``version`` cannot build edgeprune's engines (None if it can)."""
    match = re.match(r"(\d+)", str(version))
    if match is None:
        return f"cannot read the TensorRT version {version!r}"
    if int(match.group(1)) < MIN_TENSORRT_MAJOR:
        return (f"TensorRT {version} has no strongly typed networks; edgeprune needs TensorRT >= "
                f"{MIN_TENSORRT_MAJOR} (JetPack 6 on Orin; Jetson Xavier stops at JetPack 5 / TensorRT 8.5)")
    return None


def _cuda_binding_installed() -> bool:
    for name in ("cuda.bindings", "cuda.cudart", "pycuda"):
        try:
            if importlib.util.find_spec(name) is not None:
                return True
        except ModuleNotFoundError:  # find_spec("a.b") raises when package "a" is missing
            continue
    return False


def available() -> tuple[bool, str]:
    """TensorRT >= 10 imports, a CUDA Python binding is installed and a CUDA device is visible."""
    if importlib.util.find_spec("tensorrt") is None:
        return False, INSTALL_HINT
    try:
        import tensorrt
    except (ImportError, OSError) as exc:  # a wheel without its libnvinfer, or a broken JetPack install
        return False, f"TensorRT is installed but cannot be imported: {build.one_line(exc)}"
    problem = version_problem(getattr(tensorrt, "__version__", "?"))
    if problem:
        return False, problem
    if not _cuda_binding_installed():
        return False, f"no CUDA Python binding: {runner.CUDA_HINT}"
    try:
        runner.device_info(0)
    except RuntimeUnavailable as exc:
        return False, exc.one_line()
    return True, ""


def versions() -> dict[str, str]:
    """Versions of TensorRT and the CUDA Python binding that are installed (never raises)."""
    found: dict[str, str] = {}
    if importlib.util.find_spec("tensorrt") is not None:
        try:
            import tensorrt

            found["tensorrt"] = str(tensorrt.__version__)
        except (ImportError, OSError, AttributeError):
            pass
    for dist in ("cuda-python", "cuda-bindings", "pycuda"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def _trt():
    ok, reason = available()
    if not ok:
        raise RuntimeUnavailable(f"runtime tensorrt is not available here: {reason}")
    import tensorrt

    return tensorrt


def _check_request(onnx_path: Path, precision: str) -> None:
    onnx_input.check_request(onnx_path, precision, None, runtime=NAME, precisions=PRECISIONS)


def _inspect_engine(trt, logger, engine_bytes: bytes) -> dict[str, Any]:
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise CompileError("TensorRT cannot deserialize the engine it just built", "see the TensorRT log above")
    text = trt_inspect.engine_json(engine, trt)
    summary = trt_inspect.summarize_engine_json(text)
    summary["device_memory_bytes"] = runner.device_memory_bytes(engine)
    summary["engine_information"] = text
    return summary


def _require_precision(requested: str, summary: dict[str, Any]) -> None:
    problem = trt_inspect.precision_problem(requested, summary)
    if problem is None:
        return
    if not summary.get("detailed"):
        raise CompileError(problem, "report this: edgeprune builds with detailed profiling")
    raise UnsupportedPrecision(f"TensorRT did not honour {requested}: {problem}",
                               "use another precision, or check that this GPU has fast "
                               f"{requested} kernels (tensor cores)")


def compile(onnx_path: str | os.PathLike, precision: str, calib_data: np.ndarray | None,
            profile: dict[str, Any] | None, out_dir: str | os.PathLike, progress: bool = False) -> Artifact:
    """Build a strongly typed TensorRT engine at ``precision`` on this machine's GPU and prove it runs at it."""
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    _check_request(onnx_path, precision)
    settings = build.build_settings(profile, precision)
    input_shape = onnx_input.read(onnx_path, runtime="TensorRT").input_shape
    if precision == "int8":
        build.check_calibration(calib_data, input_shape)  # refuse too little calibration data before any work
    trt = _trt()
    device = runner.device_info(settings.device)
    cuda = runner.open_cuda(settings.device)  # makes the profile's device current for the builder
    try:
        return _build_artifact(trt, onnx_path, precision, calib_data, settings, device, input_shape, out_dir,
                               progress)
    finally:
        cuda.close()


def _build_artifact(trt, onnx_path: Path, precision: str, calib_data: np.ndarray | None,
                    settings: build.BuildSettings, device: dict[str, Any], input_shape: list[int], out_dir: Path,
                    progress: bool) -> Artifact:
    logger = build.make_logger(trt)
    with staging_dir(out_dir) as stage:
        prepared = build.prepare_onnx(onnx_path, precision, calib_data, stage / MODEL_ONNX, input_shape, progress)
        engine_bytes = build.build_engine(trt, logger, stage / MODEL_ONNX, settings)
        (stage / MODEL_ENGINE).write_bytes(engine_bytes)
        summary = _inspect_engine(trt, logger, engine_bytes)
        (stage / LAYERS_JSON).write_text(summary.pop("engine_information"))
        _require_precision(precision, summary)
        options = {"precision": precision, "build": settings.as_dict(), "device": device,
                   "tensorrt": str(trt.__version__), "prepared": prepared,
                   "engine": {k: summary[k] for k in ("precision", "layers", "conv", "matmul", "by_compute",
                                                      "by_output", "device_memory_bytes")}}
        options["companions"] = {name: {"bytes": (stage / name).stat().st_size, "sha256": sha256_file(stage / name)}
                                 for name in (MODEL_ONNX, LAYERS_JSON)}
        built = write_manifest(stage, runtime=NAME, precision=precision, versions=versions(),
                               input_shape=input_shape, options=options, source_onnx=onnx_path,
                               files={"model": MODEL_ENGINE})
    return Artifact(out_dir, built.manifest)


def engine_mismatch(manifest_options: dict[str, Any], tensorrt_version: str, device: dict[str, Any]) -> str | None:
    """Why an engine built as recorded in ``manifest_options`` cannot run with this TensorRT on ``device``."""
    built_trt = str(manifest_options.get("tensorrt", ""))
    built_cc = str((manifest_options.get("device") or {}).get("compute_capability", ""))
    built_name = (manifest_options.get("device") or {}).get("name", "?")
    if built_trt and built_trt != str(tensorrt_version):
        return f"the engine was built by TensorRT {built_trt}, this machine has TensorRT {tensorrt_version}"
    if built_cc and built_cc != str(device.get("compute_capability")):
        return (f"the engine was built for {built_name} (compute capability {built_cc}), this GPU is "
                f"{device.get('name')} (compute capability {device.get('compute_capability')})")
    return None


def _open(artifact: Artifact | str | os.PathLike) -> Artifact:
    return open_artifact(artifact, NAME)


def _device_index(art: Artifact) -> int:
    return int(((art.manifest.get("options") or {}).get("build") or {}).get("device", 0))


def _check_compatible(trt, art: Artifact) -> None:
    device = runner.device_info(_device_index(art))
    problem = engine_mismatch(art.manifest.get("options") or {}, str(trt.__version__), device)
    if problem:
        raise UserInputError(f"{art.path} cannot run here: {problem}",
                             "TensorRT engines run only where they were built: rebuild the artifact on this device")


def inspect(artifact: Artifact | str | os.PathLike) -> dict[str, Any]:
    """Per-layer precisions read from the engine itself: ``{"precision", "conv", "matmul", "by_compute", ...}``."""
    art = _open(artifact)
    trt = _trt()
    _check_compatible(trt, art)
    logger = build.make_logger(trt)
    summary = _inspect_engine(trt, logger, art.file("model").read_bytes())
    summary.pop("engine_information")
    return summary


def load(artifact: Artifact | str | os.PathLike, threads: int = 0):
    """A ``TensorRTRunner`` on the artifact's GPU; ``threads`` is accepted for the protocol and unused (GPU)."""
    art = _open(artifact)
    if int(threads) < 0:
        raise UserInputError(f"threads must be >= 0 (0 = runtime default), got {threads}")
    trt = _trt()
    _check_compatible(trt, art)
    engine_runner = runner.TensorRTRunner(art.file("model").read_bytes(), device=_device_index(art))
    if list(engine_runner.input_shape) != art.input_shape:
        engine_runner.close()
        raise UserInputError(f"the engine's input {list(engine_runner.input_shape)} differs from the manifest's "
                             f"{art.input_shape}", "rebuild the artifact")
    return engine_runner
