#!/usr/bin/env bash
# Creates .venv with everything edgeprune needs on this host. Idempotent.
# Usage: bash scripts/setup.sh   (EDGEPRUNE_VENV overrides the venv path)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${EDGEPRUNE_VENV:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtualenv $VENV"
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  echo "[setup] installing torch==2.13.0 (CPU build)"
  $PIP install -q --disable-pip-version-check "torch==2.13.0"
fi
echo "[setup] installing edgeprune with all CPU runtimes (openvino, onnxruntime, ncnn, mnn)"
$PIP install -q --disable-pip-version-check -e ".[all,dev]"
# Fashion-MNIST for the demo and the benchmarks (tests carry their own subset).
FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ "${EDGEPRUNE_SKIP_DATA:-0}" != "1" ] && [ ! -f "$FMNIST" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    echo "[setup] installing Debian's dataset-fashion-mnist"
    (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 ||
     (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) ||
      echo "[setup] warning: could not install dataset-fashion-mnist; run 'sudo apt-get install dataset-fashion-mnist' or pass --data PATH" >&2
  else
    echo "[setup] note: Fashion-MNIST not found at $FMNIST; run 'sudo apt-get install dataset-fashion-mnist' or pass --data PATH" >&2
  fi
fi
# The remote-device tests start a real sshd on 127.0.0.1 (they skip with a reason where it is missing).
if [ "${EDGEPRUNE_TEST_DEPS:-0}" = "1" ] && [ ! -x /usr/sbin/sshd ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    echo "[setup] installing openssh-server for the remote-device tests"
    (apt-get install -y -q openssh-server openssh-client >/dev/null 2>&1 ||
     (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q openssh-server openssh-client >/dev/null 2>&1)) ||
      echo "[setup] warning: could not install openssh-server; the remote-device tests will be skipped" >&2
  else
    echo "[setup] note: no /usr/sbin/sshd; the remote-device tests will be skipped (apt-get install openssh-server)" >&2
  fi
fi
echo "[setup] ready: $VENV/bin/edgeprune"
