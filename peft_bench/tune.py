"""`python -m peft_bench.tune experiment=<tune preset> [override ...]`: choose the hyperparameters of
every (dataset, method, backbone) from its tune sweep's runs and write them where the final stage
reads them (`tuning.chosen`; `peft_bench.tuning`).

The arguments are the tune sweep's own (the same `experiment=`, `paths.results_dir=` and any other
override of its command line, sweeps included), so that the cells are exactly the jobs that ran.
The grid's keys are the sweeps' keys other than the dataset, method, backbone and seed. A
(dataset, method, backbone) with a grid point that has no completed run is not chosen (the sweep is
resumable: finish it, then run this again). Exit status 0 when every one was chosen, 1 when some
were not (each named), 2 for a bad argument.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from peft_bench.errors import UserError
from peft_bench.plugins import config_session
from peft_bench.report.aggregate import cell_runs
from peft_bench.report.grid import Cell, preset_cells, sweep_params
from peft_bench.results.store import load_runs
from peft_bench.tuning import Choice, Key, check_tune_stage, key_of, write_choices

NOT_TUNED = {"dataset", "method", "backbone", "trainer.seed", "experiment"}


def grid_keys(arguments: Sequence[str]) -> list[str]:
    """The keys the tune sweep varies: its preset's sweeps and the command line's, less what names a cell."""
    with config_session():
        keys = list(sweep_params(arguments))
    parsed = OverridesParser.create().parse_overrides(list(arguments))
    keys += [o.key_or_group for o in parsed if o.is_sweep_override()]
    return [key for key in dict.fromkeys(keys) if key not in NOT_TUNED]


def final_val(record: pd.Series) -> float:
    """A tune run's score: its last val evaluation's main metric (the final stage reports the last)."""
    history = record.get("val_history")
    if not isinstance(history, list) or not history:
        return math.nan
    return float(history[-1].get(record["best.metric"], math.nan))


def choose(cells: Sequence[Cell], runs: pd.DataFrame, keys: Sequence[str]) -> tuple[list[Choice], list[str]]:
    """The best grid point per (dataset, method, backbone) of `cells`, and what could not be chosen."""
    groups: dict[Key, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(key_of(cell.cfg), []).append(cell)
    choices, problems = [], []
    for key, group in groups.items():
        scored = []
        for cell in group:
            completed = cell_runs(runs, cell.protocol).completed
            scores = [final_val(record) for _, record in completed.iterrows()]
            scores = [score for score in scores if not math.isnan(score)]
            values = {k: OmegaConf.select(cell.cfg, k) for k in keys}
            if not scores:
                problems.append(f"{'/'.join(key)}: no completed tune run at {values}")
                break
            metric = completed.iloc[0]["best.metric"]
            scored.append((sum(scores) / len(scores), len(scores), values, metric))
        else:
            score, _, values, metric = max(scored, key=lambda item: item[0])  # ties: the first in grid order
            seeds = min(item[1] for item in scored)
            choices.append(Choice(*key, values, metric, score, len(scored), seeds))
    return choices, problems


def split_preset(argv: Sequence[str]) -> tuple[str, list[str]]:
    presets = [a.partition("=")[2] for a in argv if a.startswith("experiment=")]
    if len(presets) != 1:
        raise UserError(
            "Name the tune sweep's preset once, as on its command line: python -m peft_bench.tune "
            "experiment=<tune preset> [the sweep's other overrides, e.g. paths.results_dir=...]."
        )
    return presets[0], [a for a in argv if not a.startswith("experiment=")]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        preset, overrides = split_preset(argv)
        cells = preset_cells(preset, overrides=overrides)
        for cell in cells:
            check_tune_stage(cell.cfg)
        keys = grid_keys(argv)
        first = cells[0].cfg
        choices, problems = choose(cells, load_runs(first.paths.results_dir), keys)
        path = Path(first.tuning.chosen)
        if choices:  # merged into the file's other choices, which must be readable
            write_choices(path, choices)
    except (UserError, HydraException, OmegaConfBaseException) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if choices:
        print(f"chose {len(choices)} of {len(choices) + len(problems)} over {', '.join(keys)}: {path}")
    for problem in problems:
        print(f"not chosen: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
