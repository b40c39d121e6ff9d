"""The paper's published numbers (paper_values.csv), looked up by the keys that place a cell in
a table: its dataset (through the profile's correspondence), method, dim or backbone."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

PAPER_VALUES = Path(__file__).with_name("paper_values.csv")


class PaperValues:
    def __init__(self, paper_datasets: Mapping[str, str], path: Path = PAPER_VALUES) -> None:
        self.frame = pd.read_csv(path, dtype={"table": str, "dim": float})
        self.paper_datasets = paper_datasets

    def value(self, table: str, metric: str, **keys: object) -> float:
        """The paper's `metric` in `table` for the row matching every key; NaN where it has none."""
        rows = self.frame[(self.frame["table"] == table) & (self.frame["metric"] == metric)]
        for key, wanted in keys.items():
            if key == "dataset":
                wanted = self.paper_datasets.get(str(wanted), wanted)
            rows = rows[rows[key] == (float(wanted) if key == "dim" else wanted)]
        if len(rows) > 1:
            raise ValueError(f"Ambiguous paper value for table {table} {metric} {keys}: {len(rows)} rows.")
        return float(rows["value"].iloc[0]) if len(rows) else math.nan
