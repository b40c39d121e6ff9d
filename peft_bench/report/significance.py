"""The report's statistics: each cell's bootstrap from its runs' stored outcomes, computed once per
report and shared by every table that shows the cell (docs/statistics.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from peft_bench.errors import UserError
from peft_bench.report.grid import Cell
from peft_bench.results.outcomes import read_outcomes
from peft_bench.stats.bootstrap import CellBootstrap, Resampling, bootstrap_cell
from peft_bench.stats.comparison import Comparison, adjust, compare
from peft_bench.tasks import TASKS

NO_OUTCOMES = "no outcomes: a run of the cell stored none (recorded before they were kept)"


@dataclass(frozen=True)
class StatsOptions:
    """What the tables' intervals and marks are: the resampling, the baseline method every cell is
    tested against, and the correction for multiple comparisons within a column."""

    resampling: Resampling = field(default_factory=Resampling)
    baseline: str = "full"
    correction: str = "holm"

    @property
    def alpha(self) -> float:
        return 1 - self.resampling.level


class Significance:
    """Bootstraps of cells (cached by protocol) and the comparisons between them."""

    def __init__(self, options: StatsOptions) -> None:
        self.options = options
        self._cells: dict[str, CellBootstrap | str] = {}

    def cell(self, completed: pd.DataFrame, cell: Cell) -> CellBootstrap | str:
        """The bootstrap of the cell's `completed` runs, or why there is none."""
        if cell.protocol not in self._cells:
            self._cells[cell.protocol] = self._bootstrap(completed, cell)
        return self._cells[cell.protocol]

    def _bootstrap(self, completed: pd.DataFrame, cell: Cell) -> CellBootstrap | str:
        task = TASKS[cell.cfg.data.task]
        if task.score is None or task.per_sample is None:
            return f"no outcomes: task {task.name} keeps none"
        ordered = completed.sort_values("seed")["record_dir"]
        try:
            outcomes = [read_outcomes(Path(directory)) for directory in ordered]
        except UserError as error:
            return f"no interval: {error}"
        if not outcomes or any(run is None for run in outcomes):
            return NO_OUTCOMES
        if any(task.per_sample not in run for run in outcomes):
            return f"no interval: a run's outcomes lack {task.per_sample!r}, which task {task.name} scores"
        sizes = {len(run[task.per_sample]) for run in outcomes}
        if len(sizes) > 1:
            return f"no interval: the runs scored test sets of different sizes ({sorted(sizes)})"
        test_set = str(cell.cfg.data.name)
        return bootstrap_cell(outcomes, sizes.pop(), task.score, test_set, self.options.resampling)

    def compare(self, difference: float, distribution: np.ndarray) -> Comparison:
        return compare(difference, distribution, self.options.resampling)

    def adjust(self, p_values: np.ndarray) -> np.ndarray:
        return adjust(p_values, self.options.correction)
