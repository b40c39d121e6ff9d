"""What a cell's runs cost, from their records' `cost` (`peft_bench/engine/cost.py`) and `flops`
(`peft_bench/engine/flops.py`).

A cell's cost is the median over its completed runs that were measured on one device: the device
most of them ran on. Costs measured on different devices are never compared: a ratio to Full exists
only where Full's cell was measured on the same device, under the same protocol. FLOPs are counted,
not measured: the same on any device, so a cell's are the median over all its completed runs that
counted them, and their ratio to Full's needs the same protocol only; so is the step memory account
(weights, gradients, AdamW moments and saved activations, `engine.step_memory`), which, unlike a CPU
process's peak resident set, tells one method's training memory from another's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd

from peft_bench.report.aggregate import cell_runs

COST_FIELDS = ("step_s", "train_img_s", "eval_img_s", "peak_mem_bytes", "delta_bytes")
# Counted at start-up with the FLOPs (`engine.flops`): the step memory account too (`engine.step_memory`).
FLOPS_FIELDS = (
    "train_per_image",
    "forward_per_image",
    "backward_per_image",
    "infer_per_image",
    "step_memory_bytes",
)
NOT_MEASURED = "not measured"  # a cell without a completed run that recorded its cost
# A cell whose completed runs have no FLOPs: recorded before runs counted them
NOT_COUNTED = "not counted (python -m peft_bench.flops <results_dir> fills them)"


@dataclass(frozen=True)
class CellCost:
    device: str | None
    protocol: str | None
    values: Mapping[str, float]
    n: int  # the runs the medians are over
    flops: Mapping[str, float] = field(default_factory=dict)  # FLOPS_FIELDS' medians, any device
    flops_n: int = 0  # the runs those medians are over
    missing: str = NOT_MEASURED  # the status of a value where no run has one

    def get(self, field: str) -> float:
        return self.values.get(field, math.nan)

    def ratio(self, field: str, full: CellCost) -> tuple[float, str]:
        """This cell's `field` over Full's, and the ratio's status (why there is none)."""
        if not self.n or not full.n:
            return math.nan, self.missing
        if (self.device, self.protocol) != (full.device, full.protocol):
            return math.nan, "Full measured on another device or protocol"
        return self.get(field) / full.get(field), "ok"

    @property
    def counted(self) -> CellCost:
        """The cell's FLOPs as a cost of no device: they compare with Full's under the same protocol,
        whichever devices ran the two."""
        return CellCost(None, self.protocol, self.flops, self.flops_n, missing=NOT_COUNTED)


def cell_cost(runs: pd.DataFrame, protocol_hash: str, protocol: str, prefer: str | None = None) -> CellCost:
    """The cost of the cell whose runs have `protocol_hash` (its protocol's name: `protocol`), over
    its runs on `prefer` where it has some (Full's device, so that the two compare), else on the
    device most of them ran on (ties: the first by name)."""
    completed = cell_runs(runs, protocol_hash).completed
    flops, flops_n = medians(completed, "flops", FLOPS_FIELDS)
    if "cost.step_s" not in completed:
        return CellCost(None, protocol, {}, 0, flops, flops_n)
    measured = completed[completed["cost.step_s"].notna()]
    if measured.empty:
        return CellCost(None, protocol, {}, 0, flops, flops_n)
    devices = measured["cost.device"].value_counts()
    device = prefer if prefer in devices else min(devices.index[devices == devices.max()])
    mine = measured[measured["cost.device"] == device]
    values, _ = medians(mine, "cost", COST_FIELDS)
    return CellCost(device, protocol, values, len(mine), flops, flops_n)


def medians(runs: pd.DataFrame, record_key: str, fields: tuple[str, ...]) -> tuple[dict[str, float], int]:
    """The median of each of `fields` of the records' `record_key` over `runs` that have it, and the
    number of runs with the first field."""
    values = {
        name: float(runs[f"{record_key}.{name}"].astype(float).median())
        for name in fields
        if f"{record_key}.{name}" in runs and runs[f"{record_key}.{name}"].notna().any()
    }
    first = f"{record_key}.{fields[0]}"
    return values, int(runs[first].notna().sum()) if first in runs else 0


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
