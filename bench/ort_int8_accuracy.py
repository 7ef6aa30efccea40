"""Does ONNX Runtime's int8 keep a trained model's accuracy on this CPU, and does 7-bit weights' range help?

Exports a trained checkpoint to ONNX, compiles it with edgeprune's ONNX Runtime target in both int8 forms (the CPU
form, uint8 activations; the TensorRT form, symmetric int8) with the weights on 8 bits and on 7 (the profile's
``int8_reduce_range``), and runs each artifact two ways on Fashion-MNIST test images: as ONNX Runtime runs it (graph
optimisations on: Q/DQ fused into int8 kernels) and op by op (optimisations off: each Q/DQ node in float, what the
artifact means). On x86 CPUs without VNNI ONNX Runtime's u8 x s8 kernels sum pairs into int16 and saturate; the
table shows what that costs and what the remedy buys. Prints a markdown table (top-1, agreement with fp32, logit
error) and the CPU's int8 flags.

Usage: python bench/ort_int8_accuracy.py --weights CKPT [--image-size 96] [--limit 10000] [--calib 256]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgeprune.data import load_dataset  # noqa: E402
from edgeprune.export import export_onnx  # noqa: E402
from edgeprune.measure.env import cpu_flags, cpu_model  # noqa: E402
from edgeprune.measure.parity import run_batched  # noqa: E402
from edgeprune.models.checkpoint import load_checkpoint  # noqa: E402
from edgeprune.profiles import load_profile  # noqa: E402
from edgeprune.targets import onnxruntime as ortt  # noqa: E402


def _arrays(ds) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(xs).numpy(), np.array([int(y) for y in ys])


def _run(art, x: np.ndarray, fused: bool) -> np.ndarray:
    """The artifact's outputs at 1 thread: as ONNX Runtime runs it, or op by op (graph optimisations off)."""
    return run_batched(ortt.load(art, 1, level=None if fused else "disable"), x, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--limit", type=int, default=10000, help="test images (default: all 10000)")
    ap.add_argument("--calib", type=int, default=256, help="calibration images from the training split")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, _, _ = load_checkpoint(args.weights)
    test = load_dataset("fashion-mnist", "test", image_size=args.image_size, limit=args.limit)
    x, y = _arrays(test)
    calib, _ = _arrays(load_dataset("fashion-mnist", "train", image_size=args.image_size, limit=args.calib))
    flags = cpu_flags() or frozenset()
    print(f"CPU: {cpu_model()}; int8 flags: "
          f"{', '.join(sorted(ortt.VNNI_FLAGS & flags)) or 'no VNNI'}; auto reduce_range: "
          f"{ortt.int8_reduce_range(load_profile('onnxruntime'))[0]}; {len(x)} test images, {len(calib)} calibration")
    with tempfile.TemporaryDirectory(prefix="edgeprune-int8acc-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_onnx(model, (1, *x.shape[1:]), onnx_path, x[:4])
        base = load_profile("onnxruntime")
        fp32 = _run(ortt.compile(onnx_path, "fp32", None, base, Path(tmp) / "fp32"), x, fused=True)
        span = float(fp32.max() - fp32.min())
        print(f"\nfp32: top-1 {100 * (fp32.argmax(1) == y).mean():.2f}%\n")
        print("| form | weights | run | top-1 % | agreement with fp32 % | max logit error / range | mean |")
        print("|---|---|---|---|---|---|---|")
        for form in ("cpu", "tensorrt"):
            for reduce in (False, True):
                if form == "tensorrt" and reduce:
                    continue  # the TensorRT form always keeps 8 bits (its consumer accumulates in int32)
                profile = {**base, "options": {**base.get("options", {}), "int8_form": form,
                                               "int8_reduce_range": reduce}}
                art = ortt.compile(onnx_path, "int8", calib, profile, Path(tmp) / f"{form}-{reduce}")
                for fused in (True, False):
                    out = _run(art, x, fused)
                    err = np.abs(out - fp32)
                    print(f"| {form} | {'7-bit' if reduce else '8-bit'} | {'fused (as ORT runs it)' if fused else 'op by op'} "
                          f"| {100 * (out.argmax(1) == y).mean():.2f} | {100 * (out.argmax(1) == fp32.argmax(1)).mean():.2f} "
                          f"| {err.max() / span:.3f} | {err.mean() / span:.4f} |", flush=True)


if __name__ == "__main__":
    main()
