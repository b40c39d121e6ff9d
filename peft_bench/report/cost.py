"""What a cell's runs cost, from their records' `cost` (`peft_bench/engine/cost.py`).

A cell's cost is the median over its completed runs that were measured on one device: the device
most of them ran on. Costs measured on different devices are never compared: a ratio to Full exists
only where Full's cell was measured on the same device, under the same protocol.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from peft_bench.report.aggregate import cell_runs

COST_FIELDS = ("step_s", "train_img_s", "eval_img_s", "peak_mem_bytes", "delta_bytes")
NOT_MEASURED = "not measured"  # a cell without a completed run that recorded its cost


@dataclass(frozen=True)
class CellCost:
    device: str | None
    protocol: str | None
    values: Mapping[str, float]
    n: int  # the runs the medians are over

    def get(self, field: str) -> float:
        return self.values.get(field, math.nan)

    def ratio(self, field: str, full: CellCost) -> tuple[float, str]:
        """This cell's `field` over Full's, and the ratio's status (why there is none)."""
        if not self.n or not full.n:
            return math.nan, NOT_MEASURED
        if (self.device, self.protocol) != (full.device, full.protocol):
            return math.nan, "Full measured on another device or protocol"
        return self.get(field) / full.get(field), "ok"


def cell_cost(runs: pd.DataFrame, protocol_hash: str, protocol: str, prefer: str | None = None) -> CellCost:
    """The cost of the cell whose runs have `protocol_hash` (its protocol's name: `protocol`), over
    its runs on `prefer` where it has some (Full's device, so that the two compare), else on the
    device most of them ran on (ties: the first by name)."""
    completed = cell_runs(runs, protocol_hash).completed
    if "cost.step_s" not in completed:
        return CellCost(None, protocol, {}, 0)
    measured = completed[completed["cost.step_s"].notna()]
    if measured.empty:
        return CellCost(None, protocol, {}, 0)
    devices = measured["cost.device"].value_counts()
    device = prefer if prefer in devices else min(devices.index[devices == devices.max()])
    mine = measured[measured["cost.device"] == device]
    values = {
        field: float(mine[f"cost.{field}"].astype(float).median())
        for field in COST_FIELDS
        if f"cost.{field}" in mine and mine[f"cost.{field}"].notna().any()
    }
    return CellCost(device, protocol, values, len(mine))


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (cost, score) that no other point beats: none costs no more and
    scores no less, with one of the two strictly; in order of cost."""
    front = [
        i
        for i, (cost, score) in enumerate(points)
        if not any(
            (c <= cost and s >= score) and (c < cost or s > score)
            for j, (c, s) in enumerate(points)
            if j != i
        )
    ]
    return sorted(front, key=lambda i: points[i])
