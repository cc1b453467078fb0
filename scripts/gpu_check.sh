#!/usr/bin/env bash
# Run ON the lent GPU machine (device tool: carry [".whl"], timeout_s ~540), after scripts/gpu_wheels.sh here.
# One pass of every GPU check issue #3 names, the cheap ones first so a slow step cannot hide them:
#   1. the CUDA-only kernel tests (tests/kernels -m gpu), 2. the kernel benchmark at the issue's target shapes, 3. the
#   rest of its sweep and its end-to-end part. Logs and JSON land in $OUT (or ./gpu_out); the JSON is rewritten after
#   every row, so a step cut by its timeout keeps what it measured. Commit the JSON under benchmarks/results/.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheels missing: run scripts/gpu_wheels.sh here and carry .whl"; exit 2; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
timeout 240 python3 -m pytest -q -m gpu tests/kernels -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log"
# the issue's targets first (D = 128, N = 4096-32768: a new length bucket autotunes for tens of seconds), then the
# rest of its sweep with the end-to-end model
timeout 200 python3 benchmarks/jvp_attention.py --head-dims 128 --seq-lens 4096 16384 32768 --no-end-to-end \
  --out "$OUT" 2>&1 | tee "$OUT/jvp_attention_d128.log"
timeout 200 python3 benchmarks/jvp_attention.py --head-dims 64 --seq-lens 1024 4096 --out "$OUT" 2>&1 \
  | tee "$OUT/jvp_attention_d64_e2e.log"
ls -la "$OUT"
