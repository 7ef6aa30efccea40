#!/usr/bin/env bash
# Issue 3's comparison: one table per model across OpenVINO, ncnn, MNN and ONNX Runtime at
# fp32/fp16/int8, 1 thread each, interleaved rounds. Results go to bench/results/runtimes-*.{md,json,csv}.
#   resnet20: the pruned model of a build (default runs/build-x86, made by `make demo`), Fashion-MNIST 28x28
#   mobilenet_v2: untrained weights at 1x3x224x224 (latency only; accuracy columns are meaningless there)
set -euo pipefail
cd "$(dirname "$0")/.."
EP=.venv/bin/edgeprune
BUILD="${1:-runs/build-x86}"
OUT=bench/results
mkdir -p "$OUT" runs
"$EP" bench "$BUILD" --targets openvino,ncnn,mnn,onnxruntime --precisions fp32,fp16,int8 \
  --data fashion-mnist --threads 1 --rounds 3 --json "$OUT/runtimes-resnet20.json" --csv "$OUT/runtimes-resnet20.csv" \
  | tee "$OUT/runtimes-resnet20.md"
.venv/bin/python - <<'PY'
from pathlib import Path
from edgeprune.export import export_onnx
from edgeprune.models import build_model
model = build_model("mobilenet_v2", num_classes=10, in_channels=3).eval()
export_onnx(model, (1, 3, 224, 224), Path("runs/mobilenet_v2-224.onnx"))
PY
"$EP" bench runs/mobilenet_v2-224.onnx --targets openvino,ncnn,mnn,onnxruntime --precisions fp32,fp16,int8 \
  --data fashion-mnist --threads 1 --rounds 3 --holdout-images 100 --latency-only \
  --json "$OUT/runtimes-mobilenet_v2.json" --csv "$OUT/runtimes-mobilenet_v2.csv" | tee "$OUT/runtimes-mobilenet_v2.md"
