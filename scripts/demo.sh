#!/usr/bin/env bash
# Install (scripts/install.sh) and run the bundled demo offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/fewstep demo "$@"
