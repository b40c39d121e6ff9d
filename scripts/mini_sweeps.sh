#!/usr/bin/env bash
# Every run of the committed mini results, in the order the README's tables need them, then the
# reports: two joblib jobs at one thread each (the 2-core CPU's best). Resumable: a completed cell is
# skipped, an interrupted one resumes, so after a change that re-keys some cells (a recipe, a
# weights revision) this runs only those. About 10 CPU-hours from an empty store.
#   bash scripts/mini_sweeps.sh [store]     (default results/mini/store)
set -euo pipefail
store=${1:-results/mini/store}
common=(trainer.threads=1 trainer.progress=false "paths.results_dir=$store")
sweep() { python -m peft_bench -m "$@" hydra/launcher=local_cpu "${common[@]}"; }

# The untrained baselines of docs/embedded.md: the test split scored before any step.
for cell in "table3_mini shapes_single" "table3_mini digits" "table3_mini shapes" \
  "table2_mini shapes_det" "table2_mini shapes_seg" "table1_mini shapes_inst"; do
  read -r preset dataset <<<"$cell"
  python -m peft_bench experiment="$preset" dataset="$dataset" method=full trainer.max_steps=0 "${common[@]}"
done

sweep experiment=table3_mini
sweep experiment=table2_mini
sweep experiment=table1_mini
sweep experiment=table2_mini dataset=shapes_seg trainer.seed=0,1,2
sweep experiment=table2_mini trainer.seed=1,2
for preset in table4_mini table5_mini fig5_mini table_ext_mini; do sweep experiment="$preset"; done

sweep experiment=vtab_mini_tune
python -m peft_bench.tune experiment=vtab_mini_tune "paths.results_dir=$store"
sweep experiment=vtab_mini

python -m peft_bench.report profile=mini "results_dir=$store" out_dir=results/mini
python scripts/embedded_curves.py "$store" --out results/mini/curves
