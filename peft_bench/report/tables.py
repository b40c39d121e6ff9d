"""Tables 1-5 in the paper's layout, as entries: one per (row, column) with our value (mean, std and
n over the cell's completed seeds, or why there is none) and the paper's value beside it.

Columns follow the cells' configs, not fixed lists: a dataset's metrics are those of its task, so
a mini preset's embedded datasets land in the same layout. Parameter columns are counted from the
cell's composed config (`peft_bench.params.count`), without training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from peft_bench.params import count
from peft_bench.report.aggregate import OK, cell_runs
from peft_bench.report.cost import cell_cost
from peft_bench.report.grid import Cell
from peft_bench.report.labels import label
from peft_bench.report.paper import PaperValues
from peft_bench.report.profiles import profile
from peft_bench.report.significance import Significance, StatsOptions
from peft_bench.results.protocol import PROTOCOL_MEANING, protocol_name
from peft_bench.stats.bootstrap import CellBootstrap

TASK_METRICS = {
    "instance": ("ap_box", "ap_mask"),
    "detection": ("ap50",),
    "semantic": ("miou",),
    "classification": ("top1", "top5"),
}
ENTRY_COLUMNS = [
    "row",
    "column",
    "kind",
    "backbone",  # a measured entry's: the rows a column's seed spread is judged over share it
    "metric",
    "ours",
    "std",
    "n",
    "status",
    "protocol",
    "device",
    "paper",
    "stats",  # ok: the entry has an interval (and, where there is a baseline, a test); else why not
    "ci_low",
    "ci_high",
    "versus",  # the method the entry is tested against
    "p",
    "p_adjusted",  # within the entry's column (StatsOptions.correction)
    "beyond",  # p_adjusted below 1 - level: beyond noise
]
# Cost columns: the record's cost field each shows, in the unit shown; ratios to Full's cell.
COST_COLUMNS = {
    "Step (s)": ("step_s", 1.0),
    "Train img/s": ("train_img_s", 1.0),
    "Eval img/s": ("eval_img_s", 1.0),
    "Peak mem (MB)": ("peak_mem_bytes", 2**-20),
    "Delta (MB)": ("delta_bytes", 2**-20),
}
RATIO_COLUMNS = {"Step ×Full": "step_s", "Mem ×Full": "peak_mem_bytes"}
# Counted columns: the record's `flops` field each shows, FLOPs per image in GFLOPs and the step memory
# account in MB; the ratios to Full's.
FLOPS_COLUMNS = {
    "Train GFLOPs/img": ("train_per_image", 1e-9),
    "Infer GFLOPs/img": ("infer_per_image", 1e-9),
    "Step mem (MB)": ("step_memory_bytes", 2**-20),
}
FLOPS_RATIO_COLUMNS = {"FLOPs ×Full": "train_per_image", "Step mem ×Full": "step_memory_bytes"}
TABLE_COST_COLUMNS = ("Step (s)", "Step ×Full", "FLOPs ×Full", "Peak mem (MB)", "Mem ×Full")  # cost=true
COST_TABLE_COLUMNS = (
    "Delta (MB)",
    "Step (s)",
    "Step ×Full",
    "Train GFLOPs/img",
    "FLOPs ×Full",
    "Train img/s",
    "Eval img/s",
    "Infer GFLOPs/img",
    "Step mem (MB)",
    "Step mem ×Full",
    "Peak mem (MB)",
    "Mem ×Full",
)
CAPTIONS = {
    "1": "Instance segmentation: trainable backbone parameters (counted), AP_box and AP_mask "
    "with their Δ to Full",
    "2": "Detection and semantic segmentation: trainable backbone parameters (counted), AP50 and mIoU "
    "with their Δ to Full",
    "3": "Classification: top-1 and top-5 accuracy per dataset and their average",
    "4": "Mona's intermediate dimension: trainable backbone parameters (counted, % of the backbone) and AP50",
    "5": "Full and Mona across backbone sizes: AP50, and Mona's trainable parameters "
    "(counted, % of the backbone)",
    "ext": "Every registered method on the paper's datasets: trainable backbone parameters (counted), "
    "the task's metrics with their Δ to Full",
}
COST_CAPTION = (
    "What each method costs: trainable backbone parameters (counted), the delta checkpoint, the median "
    "training step, training and evaluation images/s and the peak memory, each the median over the "
    "cell's runs measured on one device; ×Full only against Full measured on the same device and protocol. "
    "GFLOPs per image of a training step (forward and backward) and of inference (merged, as evaluated), "
    "counted by torch's FlopCounterMode on one batch, the same on any device: matmuls, convolutions and "
    "attention only (elementwise ops, norms, softmax and activations count zero); FLOPs ×Full: the "
    "training step's, against Full under the same protocol. Step mem: what a training step holds, "
    "accounted on the counted batch (weights, trainable gradients, AdamW's moments and the activations "
    "saved for backward; the same on any device), where the peak memory is measured (on a CPU, the "
    "process's peak resident set: mostly the process itself, alike for every method)"
)


@dataclass(frozen=True)
class Table:
    target: str  # "1" ... "5", "ext"
    preset: str
    row_name: str  # what the rows are: Method, Dim, Backbone
    entries: pd.DataFrame  # ENTRY_COLUMNS
    kind: str = "table"  # table; cost: the cost table of the target's cells; ranks: a ranks table
    description: str = ""  # what the table shows; "" for Tables 1-5 and ext, whose text is CAPTIONS'
    published: str = "the paper's value"  # what the bracketed values are, for the legend
    stats: StatsOptions | None = None  # what its intervals and marks are; None: the paper's layout
    overrides: tuple[str, ...] = ()  # composed into every cell (`override=`): the caption names them

    @property
    def name(self) -> str:
        """The stem of its files: table1 ... table5, table_ext, table_vtab, cost1 ... cost_ext, ranks_*."""
        return f"{self.kind}{'' if self.target.isdigit() else '_'}{self.target}"

    @property
    def protocols(self) -> list[str]:
        """The protocols of the table's measured cells (one, unless a sweep mixed them)."""
        return unique(self.entries["protocol"].dropna())

    @property
    def caption(self) -> str:
        if len(self.protocols) == 1:
            protocol = f"Protocol {self.protocols[0]}: {PROTOCOL_MEANING[self.protocols[0]]}."
        else:
            protocol = "The cells' protocols differ: each cell names its own."
        preset = f"preset {self.preset}" + "".join(f", {override}" for override in self.overrides)
        if self.kind == "cost":
            return f"Cost of table {self.target}'s cells ({preset}). {COST_CAPTION}. {protocol}"
        description = self.description or CAPTIONS[self.target]
        if self.kind == "ranks":
            return f"Ranks over the datasets of {self.preset}. {description}. {protocol}"
        return f"Table {self.target} ({preset}). {description}. {protocol}"


class Entries:
    """Collects a table's entries; every value is placed beside the paper's for the same keys.
    Kinds: metric (measured by runs), count (counted from the config), delta, average, cost (from
    the runs' records), flops (counted by the runs, `engine.flops`), ratio (a cost or FLOPs over
    Full's), ppt (the suite tables' trade-off) and improvement
    (their probability of improvement). With `cost_columns`, Tables 1-5 add theirs. With
    `significance`, measured entries, deltas and averages carry an interval, and each is tested
    against the baseline's entry of the same test set (`compare_to_baseline`); private fields
    (`_values`: the bootstrap distribution, `_boot`, `_versus`: what the baseline entry shares,
    `_method`) stay out of the frame."""

    def __init__(
        self,
        target: str,
        runs: pd.DataFrame,
        paper: PaperValues,
        cost_columns: bool = False,
        significance: Significance | None = None,
    ) -> None:
        self.target, self.runs, self.paper = target, runs, paper
        self.cost_columns = cost_columns
        self.significance = significance
        self.rows: list[dict[str, Any]] = []

    def dataset_label(self, dataset: str) -> str:
        """The dataset's name, with the paper's dataset it stands for where the profile maps one."""
        paper = self.paper.paper_datasets.get(dataset)
        return f"{label(dataset)} ({label(paper)})" if paper else label(dataset)

    def paper_value(self, metric: str, **keys: object) -> float:
        """The paper's value; for the extended table, the one of Tables 1-3 that has the cell."""
        for table in ("1", "2", "3") if self.target == "ext" else (self.target,):
            value = self.paper.value(table, metric, **keys)
            if not math.isnan(value):
                return value
        return math.nan

    def add(
        self, row: str, column: str, kind: str, metric: str, ours: float, paper: float, **stats: Any
    ) -> None:
        """One entry; its status, unless given: ok, or n/a where there is no value of ours. Counts
        belong to no protocol; measured entries (and what derives from them) name theirs."""
        entry = {"row": row, "column": column, "kind": kind, "metric": metric, "ours": ours, "paper": paper}
        status = "n/a" if math.isnan(ours) else OK
        defaults = {"std": math.nan, "n": math.nan, "status": status, "protocol": None, "device": None}
        defaults |= {"backbone": None}  # set by `measured`
        defaults |= {"stats": None, "ci_low": math.nan, "ci_high": math.nan, "versus": None}
        defaults |= {"p": math.nan, "p_adjusted": math.nan, "beyond": None}
        self.rows.append({**defaults, **entry, **stats})

    def measured(self, row: str, column: str, cell: Cell, metric: str, **keys: object) -> None:
        runs = cell_runs(self.runs, cell.protocol)
        stat = runs.stat(metric)
        status = runs.status if runs.status != OK or stat.n else f"no {metric} in its runs"
        paper = self.paper_value(metric, **keys)
        stats = {"std": stat.std, "n": stat.n, "status": status, "protocol": protocol_of_cell(cell)}
        stats["backbone"] = cell.cfg.backbone.name
        if self.significance is not None and stat.n:
            stats |= self.interval(cell, metric)
        self.add(row, column, "metric", metric, stat.mean, paper, **stats)

    def bootstrap(self, cell: Cell) -> CellBootstrap | str:
        assert self.significance is not None
        return self.significance.cell(cell_runs(self.runs, cell.protocol).completed, cell)

    def interval(self, cell: Cell, metric: str) -> dict[str, Any]:
        """A measured entry's interval over seeds and test images and what its test needs, or why
        it has none."""
        boot = self.bootstrap(cell)
        if isinstance(boot, str):
            return {"stats": boot}
        cfg = cell.cfg
        versus = (cfg.data.name, cfg.backbone.name, metric)
        return self.distributed(
            boot.distribution(metric), _boot=boot, _versus=versus, _method=cfg.method.name
        )

    def distributed(self, values: np.ndarray, **private: Any) -> dict[str, Any]:
        """An entry's interval from its bootstrap distribution `values`, kept with it."""
        assert self.significance is not None
        low, high = self.significance.options.resampling.interval(values)
        return {"stats": OK, "ci_low": low, "ci_high": high, "_values": values, **private}

    def difference(self, cell: Cell, base: Cell, metric: str, ours: float) -> dict[str, Any]:
        """The paired test of `cell` against `base` (same test set), for a Δ entry; {} without
        statistics."""
        if self.significance is None or math.isnan(ours):
            return {}
        boots = self.bootstrap(cell), self.bootstrap(base)
        reason = next((boot for boot in boots if isinstance(boot, str)), None)
        if reason is not None:
            return {"stats": reason}
        mine, theirs = (boot.distribution(metric) for boot in boots)
        test = self.significance.compare(ours, mine - theirs)
        return {**self.distributed(mine - theirs), "p": test.p, "versus": label(base.cfg.method.name)}

    def aggregated(self, same: Sequence[dict[str, Any]], expected: int, **private: Any) -> dict[str, Any]:
        """A mean's interval: the mean of its entries' distributions, each over its own test set's
        draws, which is the stratified bootstrap of the mean; none unless every entry has one."""
        if self.significance is None:
            return {}
        if len(same) != expected or any("_values" not in entry for entry in same):
            return {"stats": "no interval: an entry it averages has none"}
        return self.distributed(np.mean([entry["_values"] for entry in same], axis=0), **private)

    def compare_to_baseline(self) -> None:
        """Each entry with a distribution (not a Δ, tested already) against the baseline's entry that
        shares its `_versus` (its test set and metric), then the p-values adjusted within each column."""
        assert self.significance is not None
        baseline = self.significance.options.baseline
        groups: dict[Any, list[dict[str, Any]]] = {}
        for entry in self.rows:
            if "_versus" in entry:
                groups.setdefault(entry["_versus"], []).append(entry)
        for same in groups.values():
            bases = [entry for entry in same if entry["_method"] == baseline]
            if len(bases) != 1:
                continue  # no baseline entry, or no single one
            for entry in same:
                if entry is not bases[0]:
                    test = self.significance.compare(
                        entry["ours"] - bases[0]["ours"], entry["_values"] - bases[0]["_values"]
                    )
                    entry.update(p=test.p, versus=label(baseline))
        tested = [entry for entry in self.rows if not math.isnan(entry.get("p", math.nan))]
        for column in unique(entry["column"] for entry in tested):
            family = [entry for entry in tested if entry["column"] == column]
            adjusted = self.significance.adjust(np.array([entry["p"] for entry in family]))
            for entry, p in zip(family, adjusted, strict=True):
                entry.update(p_adjusted=float(p), beyond=bool(p < self.significance.options.alpha))

    def counted(self, row: str, column: str, cell: Cell, metric: str | None = None, **keys: object) -> None:
        """Trainable backbone parameters, counted: millions (`params_m`, the column "Params (M)"'s
        default) or percent (`params_percent`)."""
        counts = count(cell.cfg)
        metric = metric or ("params_m" if column == "Params (M)" else "params_percent")
        ours = counts["backbone_trainable"] / 1e6 if metric == "params_m" else counts["trainable_percent"]
        self.add(row, column, "count", metric, ours, self.paper_value(metric, **keys))

    def costs(self, row: str, prefix: str, cell: Cell, full: Cell | None, columns: Sequence[str]) -> None:
        """The cell's cost `columns` (COST_COLUMNS, RATIO_COLUMNS; ratios only where there is a Full)."""
        base = None if full is None else cell_cost(self.runs, full.protocol, protocol_of_cell(full))
        mine = cell_cost(
            self.runs, cell.protocol, protocol_of_cell(cell), prefer=base.device if base else None
        )
        for column in columns:
            # FLOPs are counted: a cost of no device, compared with Full's under the same protocol
            counted = column in FLOPS_COLUMNS or column in FLOPS_RATIO_COLUMNS
            cost, full_cost = (mine.counted, base and base.counted) if counted else (mine, base)
            kind, name = ("flops", "flops_") if counted else ("cost", "")
            ratios, values = (
                (FLOPS_RATIO_COLUMNS, FLOPS_COLUMNS) if counted else (RATIO_COLUMNS, COST_COLUMNS)
            )
            if column in ratios:
                if full_cost is None:
                    continue
                field = ratios[column]
                (ours, status), kind, metric = cost.ratio(field, full_cost), "ratio", f"{name}{field}_vs_full"
            else:
                field, scale = values[column]
                ours, status, metric = (
                    cost.get(field) * scale,
                    OK if cost.n else cost.missing,
                    f"{name}{field}",
                )
            stats = {
                "n": cost.n or math.nan,
                "status": status,
                "protocol": cost.protocol,
                "device": cost.device,
            }
            self.add(row, f"{prefix}{column}", kind, metric, ours, math.nan, **stats)

    def frame(self) -> pd.DataFrame:
        """The entries; where costs come from more than one device, each cost column names its device,
        so that no column holds costs measured on two."""
        if self.significance is not None:
            self.compare_to_baseline()
        frame = pd.DataFrame(self.rows, columns=ENTRY_COLUMNS).astype({"n": "Int64"})
        measured = frame["device"].notna()
        if frame.loc[measured, "device"].nunique() > 1:
            frame.loc[measured, "column"] += " @ " + frame.loc[measured, "device"]
        return frame


def unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def protocol_of_cell(cell: Cell) -> str:
    return protocol_name(cell.cfg)


def delta_to_full(entries: Entries, row: str, column: str, cell: Cell, full: Cell, metric: str) -> None:
    """Our Δ (difference of the means) and the paper's, beside the measured `column`; none for Full,
    and none of ours where the two cells' protocols differ."""
    method, dataset, protocol = cell.cfg.method.name, cell.cfg.data.name, protocol_of_cell(cell)
    ours = paper = math.nan
    stats: dict[str, Any] = {}
    if method != "full":
        if protocol == protocol_of_cell(full):
            ours = cell_runs(entries.runs, cell.protocol).stat(metric).mean
            ours -= cell_runs(entries.runs, full.protocol).stat(metric).mean
            stats = entries.difference(cell, full, metric, ours)
        paper = entries.paper_value(metric, dataset=dataset, method=method)
        paper -= entries.paper_value(metric, dataset=dataset, method="full")
    entries.add(row, f"Δ {column}", "delta", metric, ours, paper, protocol=protocol, **stats)


def mean_of(same: Sequence[dict[str, Any]], expected: int) -> tuple[float, float, str | None]:
    """The mean of entries of one metric, ours and the paper's, and their protocol: none unless there
    are `expected` of them, every one with a value; ours, moreover, only under one protocol."""
    protocols = unique(entry["protocol"] for entry in same)
    complete = len(same) == expected > 0
    ours = sum(entry["ours"] for entry in same) / expected if complete and len(protocols) == 1 else math.nan
    paper = sum(entry["paper"] for entry in same) / expected if complete else math.nan
    return ours, paper, protocols[0] if len(protocols) == 1 else None


def averages(entries: Entries, row: str, method: str, datasets: int) -> None:
    """Each metric's mean over the row's datasets, ours and the paper's: none unless every one has
    it, under one protocol."""
    measured = [entry for entry in entries.rows if entry["row"] == row and entry["kind"] == "metric"]
    for metric in unique(entry["metric"] for entry in measured):
        same = [entry for entry in measured if entry["metric"] == metric]
        ours, paper, protocol = mean_of(same, datasets)
        column = f"Average {label(metric)}"
        stats = {} if math.isnan(ours) else entries.aggregated(same, datasets, _versus=column, _method=method)
        entries.add(row, column, "average", metric, ours, paper, protocol=protocol, **stats)


def methods_table(
    entries: Entries, cells: Sequence[Cell], *, params: bool, delta: bool, average: bool
) -> str:
    """Tables 1-3: a row per method; per dataset, the metrics of its task (with their Δ to Full);
    optionally the parameter counts first and the average over datasets last."""
    fulls = {cell.cfg.data.name: cell for cell in cells if cell.cfg.method.name == "full"}
    datasets = unique(cell.cfg.data.name for cell in cells)
    for method in unique(cell.cfg.method.name for cell in cells):
        row, mine = label(method), [cell for cell in cells if cell.cfg.method.name == method]
        if params:
            for column in ("Params (M)", "Params %"):
                entries.counted(row, column, mine[0], dataset=mine[0].cfg.data.name, method=method)
        for cell in mine:
            dataset = cell.cfg.data.name
            for metric in TASK_METRICS[cell.cfg.data.task]:
                column = f"{entries.dataset_label(dataset)} {label(metric)}"
                entries.measured(row, column, cell, metric, dataset=dataset, method=method)
                if delta and dataset in fulls:
                    delta_to_full(entries, row, column, cell, fulls[dataset], metric)
            if entries.cost_columns:
                prefix = f"{entries.dataset_label(dataset)} "
                entries.costs(row, prefix, cell, fulls.get(dataset), TABLE_COST_COLUMNS)
        if average:
            averages(entries, row, method, len(datasets))
    return "Method"


def dims_table(entries: Entries, cells: Sequence[Cell]) -> str:
    """Table 4: a row per intermediate dimension; parameters (% of the backbone) and the metrics."""
    for cell in cells:
        dim, dataset = cell.cfg.method.dim, cell.cfg.data.name
        row = str(dim)
        entries.counted(row, "Params %", cell, dataset=dataset, dim=dim)
        for metric in TASK_METRICS[cell.cfg.data.task]:
            entries.measured(row, label(metric), cell, metric, dataset=dataset, dim=dim)
        if entries.cost_columns:
            entries.costs(row, "", cell, None, TABLE_COST_COLUMNS)
    return "Dim"


def backbones_table(entries: Entries, cells: Sequence[Cell]) -> str:
    """Table 5: a row per backbone; each method's metrics, and the tuned methods' parameters (%)."""
    fulls = {cell.cfg.backbone.name: cell for cell in cells if cell.cfg.method.name == "full"}
    for cell in cells:
        method, backbone, dataset = cell.cfg.method.name, cell.cfg.backbone.name, cell.cfg.data.name
        row, keys = label(backbone), {"dataset": dataset, "method": method, "backbone": backbone}
        for metric in TASK_METRICS[cell.cfg.data.task]:
            entries.measured(row, f"{label(method)} {label(metric)}", cell, metric, **keys)
        if method != "full":
            entries.counted(row, f"{label(method)} Params %", cell, **keys)
        if entries.cost_columns:
            entries.costs(row, f"{label(method)} ", cell, fulls.get(backbone), TABLE_COST_COLUMNS)
    return "Backbone"


def cost_table(entries: Entries, cells: Sequence[Cell]) -> str:
    """A row per method; per dataset, its trainable parameters and what its runs cost."""
    fulls = {cell.cfg.data.name: cell for cell in cells if cell.cfg.method.name == "full"}
    for cell in cells:
        method, dataset = cell.cfg.method.name, cell.cfg.data.name
        row, prefix = label(method), f"{entries.dataset_label(dataset)} "
        entries.counted(row, f"{prefix}Params (M)", cell, metric="params_m", dataset=dataset, method=method)
        entries.costs(row, prefix, cell, fulls.get(dataset), COST_TABLE_COLUMNS)
    return "Method"


LAYOUTS: dict[str, Callable[[Entries, Sequence[Cell]], str]] = {
    "1": partial(methods_table, params=True, delta=True, average=False),
    "2": partial(methods_table, params=True, delta=True, average=False),
    "3": partial(methods_table, params=False, delta=False, average=True),
    "4": dims_table,
    "5": backbones_table,
    "ext": partial(methods_table, params=True, delta=True, average=False),
}
TABLES = tuple(LAYOUTS)
METHOD_TABLES = ("1", "2", "3", "ext")  # a row per method: these have a cost table and a trade-off figure


def build_table(
    target: str,
    runs: pd.DataFrame,
    profile_name: str = "paper",
    overrides: Sequence[str] = (),
    cost_columns: bool = False,
    significance: Significance | None = None,
) -> Table:
    """Table `target` of the profile's preset from `runs` (as `load_runs` gives them);
    `overrides` are added to every cell's composition, as on the sweep's command line; with
    `significance`, intervals and tests (else the paper's layout)."""
    chosen = profile(profile_name)
    entries = Entries(target, runs, PaperValues(chosen.paper_datasets), cost_columns, significance)
    row_name = LAYOUTS[target](entries, chosen.cells(target, overrides))
    stats = None if significance is None else significance.options
    return Table(
        target, chosen.preset(target), row_name, entries.frame(), stats=stats, overrides=tuple(overrides)
    )


def build_cost_table(
    target: str, runs: pd.DataFrame, profile_name: str = "paper", overrides: Sequence[str] = ()
) -> Table:
    """The cost table of table `target`'s cells (one of METHOD_TABLES)."""
    chosen = profile(profile_name)
    entries = Entries(target, runs, PaperValues(chosen.paper_datasets))
    row_name = cost_table(entries, chosen.cells(target, overrides))
    return Table(
        target, chosen.preset(target), row_name, entries.frame(), kind="cost", overrides=tuple(overrides)
    )
