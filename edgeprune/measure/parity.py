"""Output parity of a compiled artifact against a reference (PyTorch) and the gates it must pass.

Invariants (numpy only, no torch, no runtime):
- ``compare_outputs`` compares logits row by row: ``max_rel_diff`` is the largest
  absolute difference divided by the reference's largest |value| (so it is scale
  free and defined where single references are ~0); top-1 is the argmax of each
  row. Any non-finite output makes the differences ``inf`` and is counted in
  ``nonfinite``, so a NaN can never pass a gate by comparing False.
- ``check_gates`` passes only if every criterion of the precision passes; its
  message names each failed criterion with the measured number and the limit.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from edgeprune.errors import UserInputError

DEFAULT_GATES: dict[str, dict[str, float]] = {
    "fp32": {"max_rel_diff": 1e-3, "min_top1_agreement": 0.99},
    "fp16": {"min_top1_agreement": 0.98, "max_accuracy_drop": 0.01},
    "bf16": {"min_top1_agreement": 0.98, "max_accuracy_drop": 0.01},  # gated like fp16
    "int8": {"min_top1_agreement": 0.95, "max_accuracy_drop": 0.02},
}


def _rows(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim < 2:
        raise UserInputError(f"{name} must be (N, classes...), got shape {list(a.shape)}")
    return a.reshape(len(a), -1).astype(np.float64)


def compare_outputs(outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None = None) -> dict[str, Any]:
    """Differences and top-1 agreement of ``outputs`` vs ``reference`` (and accuracies if ``labels``)."""
    out, ref = _rows(outputs, "outputs"), _rows(reference, "reference")
    if out.shape != ref.shape:
        raise UserInputError(f"outputs have shape {list(np.shape(outputs))} but the reference has "
                             f"{list(np.shape(reference))}", "check that the artifact was compiled from this model")
    nonfinite = int(out.size - np.count_nonzero(np.isfinite(out)))
    diff = np.abs(out - ref)
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    if nonfinite:
        max_abs = mean_abs = max_rel = float("inf")
    else:
        max_abs, mean_abs = float(diff.max()), float(diff.mean())
        max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    top_out, top_ref = out.argmax(axis=1), ref.argmax(axis=1)
    result: dict[str, Any] = {
        "n": int(len(out)), "max_abs_diff": max_abs, "mean_abs_diff": mean_abs, "max_rel_diff": max_rel,
        "top1_agreement": float(np.mean(top_out == top_ref)), "nonfinite": nonfinite,
    }
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != len(out):
            raise UserInputError(f"{len(labels)} labels for {len(out)} outputs")
        result["accuracy"] = float(np.mean(top_out == labels))
        result["ref_accuracy"] = float(np.mean(top_ref == labels))
    return result


def run_batched(runner: Any, x: np.ndarray, batch: int) -> np.ndarray:
    """``runner.run`` over ``x`` in batches of ``batch`` (the artifact's static batch): first outputs, stacked.

    The last partial batch is padded with zeros to ``batch`` rows and its padding trimmed off.
    """
    if batch < 1:
        raise UserInputError(f"batch must be >= 1, got {batch}")
    x = np.asarray(x, dtype=np.float32)
    chunks = []
    for start in range(0, len(x), batch):
        part = x[start:start + batch]
        n = len(part)
        if n < batch:
            part = np.concatenate([part, np.zeros((batch - n, *part.shape[1:]), dtype=np.float32)])
        out = np.asarray(runner.run(np.ascontiguousarray(part))[0])
        chunks.append(out[:n])
    if not chunks:
        raise UserInputError("run_batched got no inputs")
    return np.concatenate(chunks)


def _failures(result: dict[str, Any], criteria: dict[str, float]) -> tuple[list[str], list[str]]:
    """(failed, passed) descriptions, each with the measured number and the limit."""
    failed, passed = [], []
    if result.get("nonfinite"):
        failed.append(f"{result['nonfinite']} non-finite (NaN/inf) output values")
    for key, limit in criteria.items():
        if key == "max_rel_diff":
            got, ok = result["max_rel_diff"], result["max_rel_diff"] <= limit
            line = f"max relative difference {got:.3g} {'<=' if ok else '>'} {limit:.3g}"
        elif key == "max_abs_diff":
            got, ok = result["max_abs_diff"], result["max_abs_diff"] <= limit
            line = f"max absolute difference {got:.3g} {'<=' if ok else '>'} {limit:.3g}"
        elif key == "min_top1_agreement":
            got = result["top1_agreement"]
            ok = got >= limit
            line = f"top-1 agreement {got:.4g} {'>=' if ok else '<'} {limit:.4g}"
        elif key == "max_accuracy_drop":
            if result.get("accuracy") is None or result.get("ref_accuracy") is None:
                failed.append("accuracy drop cannot be checked without labels")
                continue
            drop = result["ref_accuracy"] - result["accuracy"]
            ok = drop <= limit
            line = (f"accuracy drop {drop:.4g} ({result['ref_accuracy']:.4g} -> {result['accuracy']:.4g}) "
                    f"{'<=' if ok else '>'} {limit:.4g}")
        else:
            raise UserInputError(f"unknown parity gate {key!r}",
                                 "use max_rel_diff, max_abs_diff, min_top1_agreement or max_accuracy_drop")
        (passed if ok else failed).append(line)
    return failed, passed


def check_gates(result: dict[str, Any], precision: str, gates: dict[str, dict[str, float]] | None = None
                ) -> tuple[bool, str]:
    """Do ``compare_outputs``'s numbers pass the gates of ``precision``? ``(ok, message)``.

    ``gates`` maps precision -> criteria like ``DEFAULT_GATES`` (which is used when it is None).
    The message lists the failed criteria with their numbers (or, on success, the passed ones).
    """
    table = DEFAULT_GATES if gates is None else gates
    if precision not in table:
        raise UserInputError(f"no parity gates for precision {precision!r}", f"gates exist for: {', '.join(table)}")
    failed, passed = _failures(result, table[precision])
    if failed:
        return False, "; ".join(failed)
    return True, "; ".join(passed) or "no criteria"
