#!/usr/bin/env bash
# The checks only a GPU can make (scripts/gpu_check.py): one PASS / FAIL / SKIP line per check, a summary.
#   bash scripts/gpu_check.sh            # on a CUDA machine: about three minutes on one H200
#   bash scripts/gpu_check.sh --dry-run  # on the CPU: what can run there, the rest skipped
#   bash scripts/gpu_check.sh --only ddp,compile  # some checks, one after another
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the checkout's package, installed or not
python scripts/gpu_check.py "$@"
