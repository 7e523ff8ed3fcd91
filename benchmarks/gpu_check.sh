#!/usr/bin/env bash
# GPU check, under 5 minutes on one H100/H200: mixed-precision detection training images/s, GPU
# utilisation and memory, DDP over all visible GPUs (benchmarks/gpu_check.py).
#
#   benchmarks/gpu_check.sh [--quick]
#
# Runs from the repository root with a Python that has torch/torchvision/lightning/torchmetrics
# (the GPU machine's image does; no Ray, Delta or Java needed). Packages that image lacks
# (msgspec, pycocotools) are installed from wheels in .whl/ when that folder exists
# (see /work/.library/device/README.md); PYTHONPATH gets the repository so cv_pipeline imports.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 290 $PY benchmarks/gpu_check.py "$@"
