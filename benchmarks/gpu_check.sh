#!/usr/bin/env bash
# The CUDA paths on a GPU machine, one table (benchmarks/gpu_check.py). Installs nothing but sinder
# itself (pip install -e ., its dependencies taken as the machine has them), then runs the check.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c "import torch, timm, transformers, safetensors, skimage, matplotlib, tqdm" \
  || { echo "gpu_check: the machine's python lacks one of sinder's dependencies (above)"; exit 2; }
"$PY" -c "import sinder" 2>/dev/null || "$PY" -m pip install -q --no-deps --no-build-isolation -e .
exec "$PY" benchmarks/gpu_check.py "$@"
