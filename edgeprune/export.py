"""PyTorch -> static-shape ONNX, simplified with onnxslim, checked against PyTorch.

Invariant: ``export_onnx`` either writes a model whose outputs match the PyTorch model on
the given inputs (max |diff| within ``rtol`` of the output scale, checked with ONNX
Runtime, the reference runner) or raises ``CompileError`` and leaves no file behind.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from edgeprune.errors import CompileError

OPSET = 17


def _torch_export(model: nn.Module, input_shape: tuple[int, ...], path: Path, opset: int) -> None:
    dummy = torch.zeros(*input_shape)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # The TorchScript exporter handles every CNN in the zoo without onnxscript;
        # static shapes, constant folding on.
        torch.onnx.export(model, (dummy,), str(path), dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["output"], do_constant_folding=True)


def _slim(path: Path) -> bool:
    """Simplify in place with onnxslim; keeps the original if onnxslim fails."""
    import onnxslim

    try:
        slimmed = onnxslim.slim(str(path))
    except Exception as exc:  # onnxslim raises many types; the unslimmed model stays valid
        warnings.warn(f"onnxslim could not simplify {path.name}: {exc}")
        return False
    onnx.save(slimmed, str(path))
    return True


def onnx_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    """Run ``x`` (N items) through the ONNX model one static batch at a time with ONNX Runtime."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    batch = sess.get_inputs()[0].shape[0]
    outs = []
    for i in range(0, len(x), batch):
        chunk = x[i:i + batch]
        if len(chunk) < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), 0)])
        outs.append(sess.run(None, {name: chunk})[0])
    return np.concatenate(outs)[: len(x)]


def torch_outputs(model: nn.Module, x: np.ndarray, batch: int = 256) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(x[i:i + batch])).numpy() for i in range(0, len(x), batch)])


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: str | os.PathLike,
                check_inputs: np.ndarray | None = None, *, opset: int = OPSET,
                rtol: float = 1e-4, slim: bool = True) -> dict[str, Any]:
    """Export, simplify and check; returns {"path", "opset", "slimmed", "max_abs_diff", "checked_on"}."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".onnx", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            _torch_export(model, tuple(input_shape), tmp, opset)
            onnx.checker.check_model(str(tmp))
        except OSError:  # a full disk or unwritable folder is not the model's fault: let the caller name it
            raise
        except Exception as exc:  # the exporter's failures are many types; report the first line
            from edgeprune.outputs import find_no_space

            if find_no_space(exc) is not None:  # a full disk, wrapped by the exporter: not an operator problem
                raise
            raise CompileError(f"ONNX export failed: {str(exc).strip().splitlines()[0]}",
                               "the model has an operator the exporter cannot handle") from exc
        slimmed = _slim(tmp) if slim else False
        x = check_inputs if check_inputs is not None else \
            np.random.default_rng(0).standard_normal((4, *input_shape[1:])).astype(np.float32)
        ref = torch_outputs(model, x)
        got = onnx_outputs(tmp, x)
        diff = float(np.max(np.abs(ref - got)))
        scale = max(1.0, float(np.max(np.abs(ref))))
        if not np.isfinite(diff) or diff > rtol * scale:
            raise CompileError(f"exported ONNX does not match PyTorch: max |diff| {diff:.3g} > {rtol * scale:.3g} "
                               f"on {len(x)} inputs", "report this model; try --no-slim")
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return {"path": str(path), "opset": opset, "slimmed": slimmed, "max_abs_diff": diff,
            "checked_on": int(len(x)), "bytes": path.stat().st_size}
