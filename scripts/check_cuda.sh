#!/usr/bin/env bash
# On a machine with an NVIDIA GPU, in one go: our CUDA kernels against the torch reference (forward and every
# gradient), 200 training steps per strategy and CUDA backend, and the CUDA rasterizer benchmark (native vs gsplat).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'check_cuda: torch sees no CUDA device')"
"$PY" -m pytest -q -rs tests/test_native.py -k cuda tests/test_train_cuda.py
"$PY" scripts/bench_cuda.py
