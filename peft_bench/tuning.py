"""Tuned protocols (`protocol=vtab`): hyperparameters chosen on a val split, then the final runs.

Stage `tune` (`protocol=vtab_tune`, a `*_tune` preset): each point of a declared grid trains on the
training split (VTAB-1k: train800) and is scored on val (val200); the test split is never evaluated.
`python -m peft_bench.tune experiment=<tune preset>` chooses, per (dataset, method, backbone), the
point with the best final val score (the mean over its seeds) and writes the choices to
`tuning.chosen` (YAML, and a CSV beside it): a file a user can read, publish and re-run.

Stage `final` (`protocol=vtab`): a run takes the values chosen for its (dataset, method, backbone)
before its protocol is hashed (the reporter's cells do the same, so they match), and its record
says where they came from; a run with no choice runs the recipe's defaults, and its record says so.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from peft_bench.config import Selection, TuningStage
from peft_bench.errors import UserError
from peft_bench.results.atomic import write_text_atomic

Key = tuple[str, str, str]  # (dataset, method, backbone)


@dataclass(frozen=True)
class Choice:
    """The grid point chosen for one (dataset, method, backbone)."""

    dataset: str
    method: str
    backbone: str
    values: dict[str, Any]  # dotted config key -> the chosen value
    metric: str  # the val metric that chose it (the task's main metric)
    score: float  # the chosen point's final val score, the mean over its seeds
    points: int  # the grid points compared
    seeds: int  # the fewest tune runs of any point

    @property
    def key(self) -> Key:
        return self.dataset, self.method, self.backbone


def key_of(cfg: DictConfig) -> Key:
    return cfg.data.name, cfg.method.name, cfg.backbone.name


def read_choices(path: Path) -> dict[Key, Choice]:
    """The choices in `path` (none if it does not exist)."""
    if not path.exists():
        return {}
    try:
        rows = yaml.safe_load(path.read_text()) or []
        choices = [Choice(**row) for row in rows]
    except (yaml.YAMLError, TypeError) as error:
        raise UserError(
            f"Cannot read the chosen hyperparameters in {path}: {error}. The file is written by "
            "`python -m peft_bench.tune experiment=<tune preset>`; delete it and run that again."
        ) from error
    return {choice.key: choice for choice in choices}


def write_choices(path: Path, choices: Iterable[Choice]) -> dict[Key, Choice]:
    """Merge `choices` into the file at `path` (a new choice replaces the old one of its key), and
    write it with a CSV beside it (`<path>.csv`), both atomically; return the merged choices."""
    merged = {**read_choices(path), **{choice.key: choice for choice in choices}}
    rows = [asdict(choice) for choice in sorted(merged.values(), key=lambda c: c.key)]
    header = "# Hyperparameters chosen on val per (dataset, method, backbone): python -m peft_bench.tune\n"
    write_text_atomic(path, header + yaml.safe_dump(rows, sort_keys=False))
    keys = list(dict.fromkeys(k for row in rows for k in row["values"]))
    buffer = io.StringIO()
    columns = ["dataset", "method", "backbone", *keys, "metric", "score", "points", "seeds"]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**{k: v for k, v in row.items() if k != "values"}, **row["values"]})
    write_text_atomic(path.with_suffix(".csv"), buffer.getvalue())
    return merged


def check_tune_stage(cfg: DictConfig) -> None:
    """A grid point is scored on val: a config of another stage, or one whose val split is the
    test split (or none), cannot choose hyperparameters."""
    stage, selection = TuningStage(cfg.tuning.stage), Selection(cfg.data.selection_split)
    if stage is not TuningStage.tune or selection is not Selection.val:
        raise UserError(
            f"Hyperparameters are chosen on the val split of a tune sweep, but {'/'.join(key_of(cfg))} "
            f"composes tuning.stage={stage.value} with data.selection_split={selection.value}: a choice "
            "on the test split would be test-set selection. Run the tune preset (experiment=vtab_tune, "
            "fgvc_tune or vtab_mini_tune) without protocol= or data.selection_split= overrides."
        )


def apply_chosen(cfg: DictConfig) -> dict[str, Any] | None:
    """At the final stage, set the values chosen for the run's (dataset, method, backbone) in `cfg`
    and return what the record says of them; at the tune stage, what it was scored on; else None."""
    stage = TuningStage(cfg.tuning.stage)
    if stage is TuningStage.none:
        return None
    if stage is TuningStage.tune:
        check_tune_stage(cfg)
        return {"stage": stage.value, "values": None}
    path = Path(cfg.tuning.chosen)
    choice = read_choices(path).get(key_of(cfg))
    if choice is None:
        untuned = (
            f"no values chosen for {'/'.join(key_of(cfg))} in {path}: the recipe's defaults ran (run the "
            "preset's tune sweep, then `python -m peft_bench.tune experiment=<tune preset>`)"
        )
        return {"stage": stage.value, "values": None, "from": str(path), "untuned": untuned}
    for key, value in choice.values.items():
        OmegaConf.update(cfg, key, value, merge=False)
    selected_on = (
        f"{choice.metric} on val, best of {choice.points} grid points (mean over {choice.seeds} seed(s))"
    )
    return {"stage": stage.value, "values": choice.values, "from": str(path), "selected_on": selected_on}
