#!/usr/bin/env bash
# The checks only a GPU can make (scripts/gpu_check.py): one PASS / FAIL / SKIP line per check.
#   bash scripts/gpu_check.sh            # on a CUDA machine, about ten minutes on one GPU
#   bash scripts/gpu_check.sh --dry-run  # on the CPU: what can run there, the rest skipped
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
python scripts/gpu_check.py "$@"
