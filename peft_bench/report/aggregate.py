"""The runs of one cell: the records whose protocol hash is the cell's, and what they amount to.

Only completed runs enter a mean; seeds of one protocol are repetitions, so they are pooled
(mean and sample standard deviation). A cell with no completed run says why: `missing`,
`running`, or `failed: <error>` of its newest attempt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

OK = "ok"


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float  # NaN with fewer than two runs
    n: int


@dataclass(frozen=True)
class CellRuns:
    completed: pd.DataFrame
    status: str  # "ok" | "missing" | "running" | "failed: <error>"

    def stat(self, metric: str) -> Stat:
        column = f"metrics.{metric}"
        values = self.completed[column].dropna() if column in self.completed else pd.Series(dtype=float)
        values = values.astype(float)
        return Stat(values.mean() if len(values) else math.nan, values.std(), len(values))


def cell_runs(runs: pd.DataFrame, protocol: str) -> CellRuns:
    """The records of `runs` (as `load_runs` gives them) that belong to the cell of `protocol`."""
    mine = runs[runs["protocol_hash"] == protocol] if "protocol_hash" in runs else runs.iloc[:0]
    completed = mine[mine["status"] == "completed"]
    if len(completed):
        return CellRuns(completed, OK)
    if mine.empty:
        return CellRuns(completed, "missing")
    newest = (mine.sort_values("started") if "started" in mine else mine).iloc[-1]
    status = "running" if newest["status"] == "running" else f"failed: {newest.get('error', 'unknown')}"
    return CellRuns(completed, status)
