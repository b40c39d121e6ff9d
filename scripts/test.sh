#!/usr/bin/env bash
# The test command: ruff (lint, format) and pytest, with the Hugging Face hub offline.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
ruff check .
ruff format --check .
python -m pytest "$@"
