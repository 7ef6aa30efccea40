"""ncnn and MNN fp32/fp16 of a trained, pruned ResNet-20 on emulated ARM cores (correctness only, no latency).

Trains ResNet-20 briefly on a Fashion-MNIST subset, prunes 50% of its channels (L1, multiples of 8),
fine-tunes, exports ONNX, then compiles on the host and runs each (target, precision) on the emulated
core through ``remote.host_compiled.check_on_device``: parity against PyTorch, top-1 agreement, accuracy,
and the fp16-vs-fp32 output difference on the same core (percent of the fp32 outputs' range).
Usage: PYTHONPATH=. python bench/arm64_emulated.py [--n 200] [--json bench/results/arm64_emulated.json]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROWS = [("emulated-a76-ncnn", "fp32"), ("emulated-a76-ncnn", "fp16"), ("emulated-a72-ncnn", "fp32"),
        ("emulated-a72-ncnn", "fp16"), ("emulated-a76-mnn", "fp32"), ("emulated-a76-mnn", "fp16"),
        ("emulated-a72-mnn", "fp32"), ("emulated-a72-mnn", "fp16")]


def _model(work: Path):
    import torch

    import edgeprune
    from edgeprune.data import load_dataset
    from edgeprune.export import export_onnx
    from edgeprune.models import build_model
    from edgeprune.train import evaluate, train

    torch.set_num_threads(1)
    train_ds = load_dataset("fashion-mnist", "train", limit=6000)
    model = build_model("resnet20", num_classes=10, in_channels=1)
    train(model, train_ds, epochs=3, progress=False)
    pruned = edgeprune.prune_channels(model, torch.zeros(1, 1, 28, 28), method="l1", ratio=0.5, round_to=8)
    train(pruned, train_ds, epochs=1, lr=0.01, progress=False)
    pruned.eval()
    test = load_dataset("fashion-mnist", "test", limit=1000)
    acc = evaluate(pruned, test, progress=False)
    export_onnx(pruned, (1, 1, 28, 28), work / "pruned.onnx")
    return pruned, acc


def _holdout(model, n: int):
    from edgeprune.data import load_dataset
    from edgeprune.deploy_check import make_holdout
    from edgeprune.train import predict_logits

    return make_holdout(load_dataset("fashion-mnist", "test"), n, lambda x: predict_logits(model, x))


def main() -> None:
    from edgeprune.profiles import load_profile
    from edgeprune.remote.emulated import EmulatedDevice
    from edgeprune.remote.host_compiled import check_on_device

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--work", default="/tmp/edgeprune-arm64-bench")
    ap.add_argument("--json", default="bench/results/arm64_emulated.json")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model, acc = _model(work)
    holdout = _holdout(model, args.n)
    print(f"pruned ResNet-20: test top-1 {acc:.4f} (1000 images); {time.perf_counter() - started:.0f} s", flush=True)
    rows, outputs = [], {}
    for name, precision in ROWS:
        profile = load_profile(name)
        t0 = time.perf_counter()
        with EmulatedDevice.from_profile(profile) as dev:
            row = check_on_device(dev, work / "pruned.onnx", profile, precision, holdout, None,
                                  work / f"{name}-{precision}")
        if row.get("outputs_path"):
            outputs[(name, precision)] = np.load(row["outputs_path"])
        rows.append({k: row.get(k) for k in ("device", "target", "precision", "status", "reason", "settings",
                                             "attempts", "latency")} |
                    {"parity": row.get("parity"), "inspect_precision": (row.get("inspect") or {}).get("precision"),
                     "arithmetic": (row.get("inspect") or {}).get("arithmetic"), "wall_s": time.perf_counter() - t0})
        print(f"{name} {precision}: {row['status']} {json.dumps(row.get('parity'))} {row.get('reason', '')[:160]}",
              flush=True)
    for name, _ in ROWS[::2]:
        a, b = outputs.get((name, "fp32")), outputs.get((name, "fp16"))
        if a is not None and b is not None:
            diff = float(np.abs(a - b).max() / (a.max() - a.min()))
            print(f"{name}: fp16 vs fp32 on the same core: max |diff| = {100 * diff:.2f}% of the fp32 output range, "
                  f"top-1 agreement {float(np.mean(a.argmax(1) == b.argmax(1))):.4f}")
            for r in rows:
                if r["target"] == name and r["precision"] == "fp16":
                    r["fp16_vs_fp32_pct_of_range"] = 100 * diff
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"model": "resnet20 pruned 50% (l1, round 8)", "test_top1": acc,
                                           "n": args.n, "rows": rows}, indent=2) + "\n")
    print(f"total {time.perf_counter() - started:.0f} s; {args.json}")


if __name__ == "__main__":
    main()
