#!/usr/bin/env bash
# Run HERE (any machine with PyPI) before a session's device run: fetches into .whl/ (git-ignored) the wheels fewstep
# needs that the lent GPU machine's image lacks (it has torch, triton, accelerate, transformers, peft, torchmetrics,
# safetensors, scipy, matplotlib, tensorboard; Python 3.12; no network). Versions are this checkout's .venv's, so the
# GPU run tests the same library code. Then: device run, carry [".whl"], command "bash scripts/gpu_check.sh".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
rm -rf .whl && mkdir -p .whl
for name in diffusers pydantic pydantic_core annotated-types typing-inspection webdataset braceexpand importlib_metadata; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "$name==$(version "$name")"
done
du -sh .whl
