"""Compile an ONNX model for a target and gate it against PyTorch — shared by build and bench.

Invariant: ``compile_checked`` returns a row whose ``status`` is "ok" only when the artifact
was compiled at the requested precision (``inspect`` agrees) and passed the parity gates on
held-out data; otherwise ``status`` says why ("unsupported", "compile failed", "parity failed")
and ``reason`` carries the runtime's message or the numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeprune.errors import CompileError, RuntimeUnavailable, UnsupportedPrecision, UserInputError
from edgeprune.measure.parity import check_gates, compare_outputs, run_batched
from edgeprune.targets import require_runtime


@dataclass
class Holdout:
    """Held-out inputs, their labels and the reference model's logits on them."""

    x: np.ndarray
    labels: np.ndarray
    reference: np.ndarray


def make_holdout(test_ds, n: int, reference: Callable[[np.ndarray], np.ndarray], seed: int = 0,
                 flag: str = "--holdout-images") -> Holdout:
    """``n`` deterministic test images with labels, and ``reference(x)`` (the PyTorch model, or the fp32 ONNX).

    ``n`` below 1 is a ``UserInputError`` naming ``flag``; more than the test set holds uses all of it, with a note.
    """
    from edgeprune.data import labeled_batch
    from edgeprune.data.memory import check_count

    n = check_count(n, len(test_ds), flag, "held-out test images")
    x, labels = labeled_batch(test_ds, n, seed=seed)
    return Holdout(x, labels, reference(x))


def compile_checked(onnx_path: Path, profile: dict[str, Any], precision: str, out_dir: Path,
                    holdout: Holdout, calib: np.ndarray | None, threads: int,
                    gates: dict | None = None, gate: bool = True) -> dict[str, Any]:
    """Compile, inspect and parity-check one artifact; never raises for runtime failures.

    ``gate=False`` (latency-only benchmarks of untrained models) still reports the parity
    numbers but does not fail the row on them; the row's ``reason`` says so.
    """
    row: dict[str, Any] = {"target": profile["name"], "runtime": profile["runtime"],
                           "precision": precision, "artifact": None}
    try:
        mod = require_runtime(profile["runtime"])
        if precision not in profile["precisions"] or precision not in mod.PRECISIONS:
            raise UnsupportedPrecision(f"{profile['name']} ({profile['runtime']}) does not offer {precision}",
                                       f"choose one of: {', '.join(p for p in profile['precisions'] if p in mod.PRECISIONS)}")
        artifact = mod.compile(onnx_path, precision, calib, profile, out_dir)
        row["artifact"] = str(artifact.path)
        row["inspect"] = mod.inspect(artifact)
        row["size_mb"] = artifact.size_bytes() / 1e6
        runner = mod.load(artifact, threads)
    except (UnsupportedPrecision, RuntimeUnavailable) as exc:
        return {**row, "status": "unsupported", "reason": exc.one_line()}
    except (CompileError, UserInputError) as exc:
        return {**row, "status": "compile failed", "reason": exc.one_line()}
    outputs = run_batched(runner, holdout.x, artifact.input_shape[0])
    parity = compare_outputs(outputs, holdout.reference, holdout.labels)
    ok, why = check_gates(parity, precision, gates)
    row["parity"] = parity
    row["accuracy"] = parity.get("accuracy")
    row["status"] = "ok" if ok or not gate else "parity failed"
    row["reason"] = "" if ok else (why if gate else f"not gated (latency only): {why}")
    return row
