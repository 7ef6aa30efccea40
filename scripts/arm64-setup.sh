#!/usr/bin/env bash
# Sets up the emulated arm64 device (qemu-user, an arm64 Python 3.11 sysroot, aarch64 ncnn/MNN/numpy
# wheels) under $EDGEPRUNE_ARM64_ROOT (default ~/.cache/edgeprune/arm64). Idempotent: about a second
# when already done. Nothing arm64 is installed system-wide (see edgeprune/remote/arm64_setup.py).
# Usage: bash scripts/arm64-setup.sh [--optional]   (--optional: exit 0 and say why when it cannot)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${EDGEPRUNE_VENV:-.venv}"
PY="$VENV/bin/python"
[ -x "$PY" ] || PY="${PYTHON:-python3}"
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" -m edgeprune.remote.arm64_setup "$@"
