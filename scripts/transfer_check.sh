#!/usr/bin/env bash
# Does the offline pretrained backbone (backbone.weights=mini) transfer? On the embedded downstream
# task (shapes), at the same budget: Fixed and Full, from the pretrained and from random weights.
# Usage: bash scripts/transfer_check.sh [results_dir] [extra overrides...]
set -euo pipefail
cd "$(dirname "$0")/.."
results=${1:-results}
shift || true
for method in fixed full; do
  for weights in mini none; do
    python -m peft_bench method=$method backbone.weights=$weights dataset=shapes \
      trainer.progress=false paths.results_dir="$results" "$@"
  done
done
python - "$results" <<'PY'
import sys
from peft_bench.results import load_runs
runs = load_runs(sys.argv[1])
runs = runs[(runs.dataset == "shapes") & runs.method.isin(["fixed", "full"]) & (runs.status == "completed")]
table = runs[["method", "weights", "metrics.top1", "metrics.top5", "wall_s"]]
print(table.sort_values(["method", "weights"]).to_string(index=False))
PY
