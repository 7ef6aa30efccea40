"""ONNX -> ncnn ``.param``/``.bin`` with the pnnx converter, run in a subprocess.

Invariant: ``convert`` leaves exactly ``model.param`` and ``model.bin`` in the
folder it is given (pnnx's scratch files live in a subfolder it removes), or
raises ``CompileError`` with the converter's last meaningful line, naming the
operators ncnn lacks when that is the cause.

- The ONNX is re-saved at the lowest IR version its opsets allow: the
  onnxruntime inside pnnx 20261020 rejects IR > 13 (and pnnx then crashes with
  SIGSEGV), while onnx 1.23's ``helper.make_model`` writes IR 14. Only the header
  field changes. pnnx also writes ``<name>.pnnxsim.onnx`` next to its input, so
  it always gets this copy, never the caller's file.
- pnnx exits 0 even when it leaves an operator unconverted (it logs ``todo <Op>``
  and writes the op into the .param), so every layer type is also checked
  against ncnn's layer registry (``ncnn.create_layer``).
- The native ``pnnx`` binary inside the pnnx wheel is run directly: for ONNX
  input it loads no libtorch (checked with ``LD_DEBUG=libs``). The ``pnnx``
  console script is only a fallback; it is a Python wrapper whose ``import pnnx``
  imports torch. ``pnnx_exe`` says which one it found.

Imports neither torch nor (at module level) onnx or ncnn.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from edgeprune.errors import CompileError, RuntimeUnavailable, UserInputError
from edgeprune.targets.ncnn_format import read_param

CONVERT_TIMEOUT_S = 600
PARAM_FILE, BIN_FILE = "model.param", "model.bin"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_NOISE = re.compile(r"^(#+ |model inputshape|FLOPS|memory OPS|[│┌└├])|\.\.\.\s+[\d.]+ms$|LogEarlyWarning")


def pnnx_exe() -> tuple[Path | None, bool]:
    """(pnnx executable, whether running it imports torch): the wheel's native binary, else ``pnnx`` on PATH."""
    exe_name = "pnnx.exe" if os.name == "nt" else "pnnx"
    spec = importlib.util.find_spec("pnnx")  # finds the package without importing it (its __init__ imports torch)
    for loc in (spec.submodule_search_locations or []) if spec else []:
        cand = Path(loc) / exe_name
        if cand.is_file() and os.access(cand, os.X_OK):
            return cand, False
    for where in (str(Path(sys.executable).parent), None):
        found = shutil.which("pnnx", path=where)
        if found:
            with open(found, "rb") as fh:
                return Path(found), fh.read(2) == b"#!"  # a script is the Python wrapper: it imports torch
    return None, False

# ----------------------------------------------------------------------------- ONNX in
def static_shape(value_info) -> list[int] | None:
    dims = value_info.type.tensor_type.shape.dim
    shape = [d.dim_value for d in dims]
    return shape if shape and all(v > 0 for v in shape) else None


def require_batch_one(shape: list[int], onnx_path: Path) -> list[int]:
    """The (already static, single) input shape, if ncnn can take it: batch 1, rank 2 to 4."""
    if not 2 <= len(shape) <= 4 or shape[0] != 1:
        raise UserInputError(f"{onnx_path} has input shape {shape}; ncnn takes batch-1 inputs of rank 2 to 4",
                             "export with batch size 1 (edgeprune runs larger batches item by item)")
    return shape


def _write_for_pnnx(model, dest: Path) -> dict[str, int]:
    """Save ``model`` at the lowest IR version its opsets allow (what pnnx's onnxruntime can read)."""
    import onnx

    source = int(model.ir_version)
    lowest = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    model.ir_version = min(source, lowest)
    try:
        onnx.save(model, str(dest))
        return {"source": source, "converted": int(model.ir_version)}
    finally:
        model.ir_version = source  # the caller's model is left as it was


# ----------------------------------------------------------------------------- pnnx
def _last_line(log: str) -> str:
    """The converter's last line that is not progress/statistics noise, C++ signatures cut out."""
    for line in reversed(log.splitlines()):
        line = line.strip()
        if line and not _NOISE.search(line):
            trailing = re.search(r"\)\s+([A-Z][^()]*)$", line)  # onnxruntime: "what /src/file.cc:1 sig(...) Message"
            if trailing and len(line) > 160:
                return f"{re.match(r'[^/(]*', line).group().strip()}: {trailing.group(1)}"
            return line
    return "no output"


def _run_pnnx(exe: Path, args: list[str], work: Path, onnx_path: Path) -> str:
    try:
        res = subprocess.run([str(exe), *args], cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, errors="replace", timeout=CONVERT_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise CompileError(f"pnnx did not convert {onnx_path.name} within {CONVERT_TIMEOUT_S} s",
                           "simplify the model or convert it by hand with pnnx") from exc
    except OSError as exc:
        raise RuntimeUnavailable(f"cannot run the pnnx converter {exe}: {exc}",
                                 f"reinstall it with: pip install 'edgeprune[ncnn]'") from exc
    log = _ANSI.sub("", res.stdout or "")
    if res.returncode != 0:
        how = f"exit status {res.returncode}" if res.returncode > 0 else f"crashed with signal {-res.returncode}"
        raise CompileError(f"pnnx could not convert {onnx_path.name} for ncnn ({how}): {_last_line(log)}",
                           f"run pnnx by hand for the full log: pnnx {onnx_path.name} {' '.join(args[1:5])}")
    return log


def _unsupported_ops(ncnn, log: str, param: Path) -> list[str]:
    """Operators pnnx left unconverted (``todo <Op>``) and .param layer types ncnn cannot create."""
    missing = re.findall(r"^todo (\S+)", log, flags=re.MULTILINE)
    for layer in read_param(param):
        if layer.type not in missing and ncnn.create_layer(layer.type) is None:
            missing.append(layer.type)
    return missing


def convert(ncnn, exe: Path, model, input_shape: list[int], precision: str, stage: Path,
            onnx_path: Path) -> dict[str, Any]:
    """Run pnnx in ``stage/.pnnx`` and keep only ``model.param``/``model.bin`` in ``stage``.

    ``ncnn`` is the imported ncnn module (its layer registry names the unsupported operators).
    """
    work = stage / ".pnnx"
    work.mkdir()
    ir = _write_for_pnnx(model, work / "model.onnx")
    args = ["model.onnx", f"inputshape=[{','.join(str(d) for d in input_shape)}]",
            f"fp16={int(precision == 'fp16')}", "optlevel=2", "device=cpu",
            "pnnxparam=model.pnnx.param", "pnnxbin=model.pnnx.bin", "pnnxpy=model_pnnx.py",
            "pnnxonnx=model.pnnx.onnx", "ncnnparam=model.ncnn.param", "ncnnbin=model.ncnn.bin",
            "ncnnpy=model_ncnn.py"]
    log = _run_pnnx(exe, args, work, onnx_path)
    param, weights = work / "model.ncnn.param", work / "model.ncnn.bin"
    if not (param.is_file() and weights.is_file()):
        raise CompileError(f"pnnx wrote no ncnn model for {onnx_path.name}: {_last_line(log)}",
                           "check the model's operators against ncnn's supported list")
    missing = _unsupported_ops(ncnn, log, param)
    if missing:
        raise CompileError(f"ncnn has no layer for operator(s) {', '.join(missing)} in {onnx_path.name} "
                           "(pnnx left them unconverted)",
                           "replace these operators in the model with ones ncnn supports, then re-export")
    os.replace(param, stage / PARAM_FILE)
    os.replace(weights, stage / BIN_FILE)
    shutil.rmtree(work)
    return {"tool": "pnnx", "executable": exe.name, "args": args, "onnx_ir_version": ir}


