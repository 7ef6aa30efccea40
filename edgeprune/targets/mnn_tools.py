"""MNN's offline tools, run in subprocesses: converter, int8 quantizer, model dump.

Invariant: every tool runs as ``_tools.<tool>(argv)`` from the MNN wheel in a
child process with a timeout, and succeeds only if its output file exists (the
converter exits 0 even when it fails); a failure is one ``CompileError`` line
quoting the tool's meaningful output line (the unsupported operators by name).

Why not the wheel's ``mnnconvert``/``mnnquant`` console scripts, which wrap exactly
these calls: in MNN 3.6.1 both import ``MNN.tools.utils.log``, which runs
``pip install -U aliyun-log-python-sdk`` with whatever ``pip`` is on PATH and then
uploads usage logs (model id, machine id, arguments); and ``mnnquant`` passes three
strings where an argv list is expected, so it aborts with ``std::length_error``.

Calibration for ``mnnquant``: it reads *images* (stb_image; RGBA converted to
``format``, then ``(pixel - mean) * normal``), so float NCHW samples are written as
8-bit PGM (1 channel, GRAY) or PPM (3 channels, RGB) through a per-channel affine
map that ``mean``/``normal`` invert (exact for data that came from 8-bit images,
otherwise within half of (max - min) / 255). Other channel counts raise
``UnsupportedPrecision``. Nothing here imports torch or MNN.

int8 input layout: MNN's converter keeps an ONNX model's NCHW input (``--keepInputFormat``, on
by default) by inserting a ConvertTensor op in front of the first convolution, and ``mnnquant``
then quantizes that op's input, i.e. the model input, with a KL scale. On image inputs KL clips
the bright tail (a pruned ResNet-20 on Fashion-MNIST: inputs up to 2.02 clipped at 0.81, which
alone drops top-1 agreement with fp32 to 0.92). Converting the int8 model's float source with
``--keepInputFormat=0`` (input in MNN's NC4HW4) leaves no such op: the first convolution reads the
float input and stays float, everything after it is int8 (agreement 0.976, see
``bench/results/int8.md``). The profile option ``int8_keep_input_format = true`` restores the old
graph; ``skip_quant_ops`` (MNN op names) keeps further convolutions in float.

Child processes start with ``child_python()``: ``sys.executable``, or the argv list in
``$EDGEPRUNE_CHILD_PYTHON`` (JSON) where this Python cannot start itself: under qemu user-mode
emulation without binfmt an arm64 Python cannot exec its own binary, so the emulated device sets
it to the same ``qemu-aarch64 ... python3.11`` command line it was started with.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune.errors import CompileError, UnsupportedPrecision, UserInputError
from edgeprune.targets import onnx_input

CONVERT_TIMEOUT_S = 600
QUANTIZE_TIMEOUT_S = 1800
BIZ_CODE = "edgeprune"
FEATURE_METHODS = ("KL", "ADMM", "EMA")
WEIGHT_METHODS = ("MAX_ABS", "ADMM")
# Input channels -> (mnnquant image format, PNM magic, file suffix).
_IMAGE_FORMATS = {1: ("GRAY", b"P5", "pgm"), 3: ("RGB", b"P6", "ppm")}
_HALF_QUAN_TYPE = 3  # IDSTQuan.type of weights stored as half floats by ``--fp16``
_TOOL = "import sys, _tools; getattr(_tools, sys.argv[1])(sys.argv[1:])"


def meaningful_line(output: str) -> str:
    """The line of converter/quantizer output that says why it failed, without timestamps."""
    lines = [re.sub(r"^\[[\d:]+\]\s*[:@]?\s*\d*:\s*", "", ln).strip() for ln in output.splitlines()]
    lines = [ln for ln in lines if ln and "device supports" not in ln]
    for ln in lines:
        if "Not Support" in ln:
            ops = ln.split(":", 1)[-1].replace("ONNX::", "").split()
            return f"operator(s) not supported by MNN: {', '.join(ops)}"
    for pattern in (r"\[ERROR\]|Error|error", r"failed|Failed|what\(\)|Check failed"):
        hits = [ln for ln in lines if re.search(pattern, ln)]
        if hits:
            return hits[0]
    return lines[-1] if lines else "no output"


CHILD_PYTHON_ENV = "EDGEPRUNE_CHILD_PYTHON"


def child_python() -> list[str]:
    """The argv prefix that starts a Python like this one (see the module docstring)."""
    text = os.environ.get(CHILD_PYTHON_ENV)
    if text:
        try:
            argv = json.loads(text)
        except ValueError:
            argv = None
        if isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv):
            return argv
        raise UserInputError(f"${CHILD_PYTHON_ENV} must be a JSON list of strings, got {text[:60]!r}",
                             "unset it, or set it to the argv that starts Python")
    return [sys.executable]


def run_tool(tool: str, argv: list[str], timeout: float, what: str) -> str:
    """Run ``_tools.<tool>([tool, *argv])`` in a subprocess; its combined output."""
    try:
        res = subprocess.run([*child_python(), "-c", _TOOL, tool, *argv], capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise CompileError(f"MNN {tool} timed out after {timeout:.0f} s on {what}",
                           "simplify the model or raise the timeout") from exc
    output = res.stdout + res.stderr
    if res.returncode != 0:
        raise CompileError(f"MNN {tool} crashed (exit {res.returncode}) on {what}: {meaningful_line(output)}",
                           "check the model and calibration data")
    return output


def convert(onnx_path: Path, out: Path, fp16: bool, keep_input_format: bool = True) -> list[str]:
    """ONNX -> .mnn; returns the equivalent ``mnnconvert`` command.

    ``keep_input_format=False`` gives the model an NC4HW4 input (the runner still takes NCHW).
    """
    argv = ["-f", "ONNX", "--modelFile", str(onnx_path), "--MNNModel", str(out), "--bizCode", BIZ_CODE]
    argv += ["--fp16"] if fp16 else []
    argv += [] if keep_input_format else ["--keepInputFormat=0"]
    output = run_tool("mnnconvert", argv, CONVERT_TIMEOUT_S, str(onnx_path))
    if not out.is_file() or out.stat().st_size == 0:
        raise CompileError(f"MNN cannot convert {onnx_path}: {meaningful_line(output)}",
                           "check that the file is a complete ONNX model with operators MNN supports")
    return ["mnnconvert", *argv[:5], out.name, *argv[6:]]


def quant_methods(profile: dict[str, Any] | None) -> tuple[str, str]:
    opts = (profile or {}).get("options") or {}
    feature = str(opts.get("feature_quantize_method", "KL")).upper()
    weight = str(opts.get("weight_quantize_method", "MAX_ABS")).upper()
    if feature not in FEATURE_METHODS or weight not in WEIGHT_METHODS:
        raise UserInputError(f"unknown MNN quantize method {feature!r}/{weight!r} in the target profile",
                             f"feature_quantize_method: {', '.join(FEATURE_METHODS)}; "
                             f"weight_quantize_method: {', '.join(WEIGHT_METHODS)}")
    return feature, weight


def int8_settings(profile: dict[str, Any] | None) -> dict[str, Any]:
    """The int8 options of a target profile: methods, input layout, op names kept float."""
    opts = (profile or {}).get("options") or {}
    feature, weight = quant_methods(profile)
    keep = opts.get("int8_keep_input_format", False)
    skip = opts.get("skip_quant_ops", [])
    if not isinstance(keep, bool):
        raise UserInputError(f"int8_keep_input_format must be true or false, got {keep!r}",
                             "false (default): the first convolution reads the float input")
    if not isinstance(skip, list) or not all(isinstance(name, str) for name in skip):
        raise UserInputError(f"skip_quant_ops must be a list of MNN op names, got {skip!r}",
                             'e.g. skip_quant_ops = ["output__matmul_converted"]')
    return {"feature_quantize_method": feature, "weight_quantize_method": weight,
            "keep_input_format": keep, "skip_quant_op_names": list(skip)}


def write_calibration(calib: np.ndarray, input_shape: list[int], folder: Path) -> dict[str, Any]:
    """Write samples as 8-bit PGM/PPM images plus the mnnquant preprocessing that maps them back."""
    calib = onnx_input.calibration(calib, input_shape)
    n, channels, height, width = calib.shape
    if channels not in _IMAGE_FORMATS:
        raise UnsupportedPrecision(f"MNN int8 calibrates from 1- or 3-channel images; this model takes {channels} "
                                   "input channels", "use --precision fp32 or fp16")
    fmt, magic, suffix = _IMAGE_FORMATS[channels]
    low = calib.min(axis=(0, 2, 3)).astype(np.float64)
    step = (calib.max(axis=(0, 2, 3)) - low) / 255.0
    step[step <= 0] = 1.0  # a constant channel: every pixel is 0 and maps back to ``low``
    pixels = np.rint((calib - low[:, None, None]) / step[:, None, None]).clip(0, 255).astype(np.uint8)
    folder.mkdir(parents=True)
    header = magic + f"\n{width} {height}\n255\n".encode()
    for i, sample in enumerate(pixels):
        (folder / f"{i:06d}.{suffix}").write_bytes(header + np.ascontiguousarray(sample.transpose(1, 2, 0)).tobytes())
    return {"format": fmt, "mean": (-low / step).tolist(), "normal": step.tolist(), "width": width,
            "height": height, "path": f"{folder}{os.sep}", "used_image_num": n}


def quantize(float_model: Path, out: Path, calib: np.ndarray, input_shape: list[int], work: Path,
             settings: dict[str, Any]) -> dict[str, Any]:
    """mnnquant float_model -> out, calibration written under ``work``; the settings to record.

    ``settings`` is ``int8_settings(profile)``. mnnquant also writes ``<out>.json`` (its scales)
    beside ``out``.
    """
    config = write_calibration(calib, input_shape, work / "calibration")
    methods = settings["feature_quantize_method"], settings["weight_quantize_method"]
    config.update(feature_quantize_method=methods[0], weight_quantize_method=methods[1])
    if settings.get("skip_quant_op_names"):
        config["skip_quant_op_names"] = settings["skip_quant_op_names"]
    config_path = work / "quant.json"
    config_path.write_text(json.dumps(config))
    output = run_tool("mnnquant", [str(float_model), str(out), str(config_path)], QUANTIZE_TIMEOUT_S,
                      f"{config['used_image_num']} calibration samples")
    if not out.is_file() or out.stat().st_size == 0:
        raise CompileError(f"MNN int8 quantization failed: {meaningful_line(output)}", "try --precision fp32")
    return {"tool": "mnnquant", "feature_quantize_method": methods[0], "weight_quantize_method": methods[1],
            "calibration_samples": config["used_image_num"], "image_format": config["format"],
            "keep_input_format": settings.get("keep_input_format", True),
            "skip_quant_op_names": list(settings.get("skip_quant_op_names") or [])}


def weights_report(model: Path) -> dict[str, Any]:
    """Weight storage and int8-annotated tensors, read from the converter's JSON dump of the .mnn."""
    with tempfile.TemporaryDirectory(prefix="edgeprune-mnn-dump-") as tmp:
        dump = Path(tmp) / "model.json"
        output = run_tool("mnnconvert", ["-f", "MNN", "--modelFile", str(model), "--JsonFile", str(dump)],
                          CONVERT_TIMEOUT_S, str(model))
        if not dump.is_file():
            raise CompileError(f"MNN cannot read {model}: {meaningful_line(output)}", "rebuild the artifact")
        net = json.loads(dump.read_text())
    storage: Counter[str] = Counter()
    for op in net.get("oplists", []):
        main = op.get("main") or {}
        quan = main.get("quanParameter")
        if quan:
            storage["fp16" if quan.get("type") == _HALF_QUAN_TYPE else f"int{quan.get('aMaxOrBits', 8)}"] += 1
        elif main.get("weight"):
            storage["fp32"] += 1
    int8_tensors = sum(1 for d in net.get("extraTensorDescribe") or []
                       if (d.get("quantInfo") or {}).get("type") == "DT_INT8")
    weights = storage.most_common(1)[0][0] if len(storage) == 1 else ("mixed" if storage else "none")
    return {"weights": weights, "weight_storage": dict(sorted(storage.items())), "int8_tensors": int8_tensors}
