#!/usr/bin/env bash
# Install peft_bench with its pinned torch. EXTRAS=dev also installs the test tools.
# torch/torchvision come first and pinned, so that the ranges in pyproject.toml never pull
# another (multi-GB) build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
python3 -m pip install --quiet -e ".${EXTRAS:+[$EXTRAS]}"
