#!/usr/bin/env bash
# The demo: train ResNet-20 on Fashion-MNIST for one epoch, then prune half its channels,
# fine-tune one epoch, and compile + measure baseline vs pruned on OpenVINO (this CPU).
# A few minutes on 2 cores. Outputs land in runs/.
set -euo pipefail
cd "$(dirname "$0")/.."
EP="${EDGEPRUNE_VENV:-.venv}/bin/edgeprune"
EPOCHS="${DEMO_EPOCHS:-1}"
mkdir -p runs
if [ ! -f runs/resnet20-fmnist/model.pt ]; then
  "$EP" train --model resnet20 --data fashion-mnist --epochs "$EPOCHS" --out runs/resnet20-fmnist --force
fi
"$EP" build --target x86 --model resnet20 --weights runs/resnet20-fmnist/model.pt \
  --data fashion-mnist --method l1 --ratio 0.5 --finetune-epochs "$EPOCHS" \
  --threads 1 --out runs/build-x86 --force
