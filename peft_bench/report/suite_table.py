"""The suite tables (`table=vtab`, `table=fgvc`): a row per (backbone, method) of the profile's preset
(vtab, fgvc; vtab_mini under profile=mini), a column per task of the suite in its order, then the
averages, the counted parameters and V-PETL Bench's PPT.

VTAB's papers average two ways that differ by 2-3 pp, so both are shown: `Mean (groups)`, the mean of
the Natural, Specialized and Structured means (VPT's, NOAH's, SSF's, FacT's and Adapter+'s headline),
and `Mean (tasks)`, the plain mean over the tasks (V-PETL Bench's). A suite without groups (FGVC) has
one `Mean`. A mean is given only where every task it covers has a value, under one protocol and one
image pipeline. `PPT = M * exp(-log10(P / 10^7 + 1))`, M the task mean as a fraction and P the
trainable backbone parameters: V-PETL Bench's performance-parameter trade-off (README of
synbol/Parameter-Efficient-Transfer-Learning-Benchmark; it reproduces every PPT printed there to 0.01).

Beside ours, in brackets, V-PETL Bench's published values (published_vtab.csv, each with its source)
where a cell is the one they measured: ViT-B/16 with the original ImageNet-21k weights. They are
test-max numbers of one seed. A row whose cells ran without values chosen on val (`tuning.values`
null in their records: the recipe's defaults ran) says `(untuned)`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from peft_bench.data.suites import Suite, suite_of
from peft_bench.errors import UserError
from peft_bench.report.aggregate import cell_runs
from peft_bench.report.grid import Cell
from peft_bench.report.labels import label
from peft_bench.report.paper import PaperValues
from peft_bench.report.profiles import profile
from peft_bench.report.significance import Significance
from peft_bench.report.tables import Entries, Table, mean_of, unique
from peft_bench.stats.improvement import probability_of_improvement

SUITE_TABLES = ("vtab", "fgvc")
PUBLISHED = Path(__file__).with_name("published_vtab.csv")
MEANS_NOTE = (
    "{suite}: top-1 (%) per task{groups}, each mean only where every task it covers has a value, under one "
    "protocol and one image pipeline"
)
GROUPS_NOTE = (
    ", the mean of each group ({groups}), Mean (groups) = the mean of the group means (VPT's, NOAH's, "
    "SSF's, FacT's and Adapter+'s convention) and Mean (tasks) = the plain mean over the {tasks} tasks "
    "(V-PETL Bench's)"
)
PPT_NOTE = (
    "Params (M): trainable backbone parameters, counted from the config. "
    "PPT = M * exp(-log10(P / 10^7 + 1)), M the {mean} as a fraction and P the parameters: "
    "V-PETL Bench's performance-parameter trade-off"
)
PUBLISHED_NOTE = (
    "[Bracketed]: V-PETL Bench's published values (synbol/Parameter-Efficient-Transfer-Learning-Benchmark "
    "README @c188fad; its rows Full fine-tuning, Linear probing and VPT-Deep beside Full, Fixed and VPT), "
    "ViT-B/16 ImageNet-21k, one seed, protocol test-max (the best test accuracy over training: test-set "
    "selection), so not like for like with a val-selected cell"
)
IMPROVEMENT_NOTE = (
    "P(> {baseline}) (%): the probability that the row beats {baseline}'s row on a task, averaged over the "
    "tasks (rliable's probability of improvement: per task, the fraction of pairs of runs in which the "
    "row's is higher, ties counting half), with its interval from the same draws"
)
UNTUNED_NOTE = (
    "(untuned): the row's cells (or those named) ran without values chosen on val: the recipe's defaults"
)


def ppt(mean_percent: float, params: float) -> float:
    """V-PETL Bench's performance-parameter trade-off of a mean top-1 (%) at `params` trainable parameters."""
    return mean_percent / 100 * math.exp(-math.log10(params / 1e7 + 1))


def suite_of_cells(cells: Sequence[Cell], preset: str) -> Suite:
    """The one suite whose tasks the cells' datasets are."""
    datasets = unique(cell.cfg.data.name for cell in cells)
    suites = {suite_of(dataset) for dataset in datasets}
    if len(suites) != 1 or None in suites:
        raise UserError(
            f"Preset {preset!r} sweeps datasets {', '.join(datasets)}, which are not the tasks of one suite "
            "(peft_bench.data.suites): a suite table reads a preset that sweeps one suite's tasks."
        )
    return suites.pop()


def untuned(runs: pd.DataFrame, cell: Cell) -> bool:
    """Whether the cell's completed runs ran a tuned protocol's final stage without chosen values."""
    completed = cell_runs(runs, cell.protocol).completed
    if "tuning.values" not in completed or "tuning.stage" not in completed:
        return False  # records from before tuned protocols, or of protocols without tuning
    return bool(((completed["tuning.stage"] == "final") & completed["tuning.values"].isna()).any())


def pipeline(cell: Cell) -> str:
    """What of the image pipeline a config chooses (the loader is the suite's): its normalisation."""
    return str(cell.cfg.data.normalization)


def group_size(suite: Suite, group: str) -> int:
    return sum(task.group == group for task in suite.tasks)


def row_label(method: str, backbone: str, backbones: int, marked: Sequence[str], measured: int) -> str:
    """`Method`, or `Method (Backbone)` where the preset has several; `(untuned)` where its measured
    cells ran without chosen values, naming the tasks where only some did."""
    text = label(method) if backbones == 1 else f"{label(method)} ({label(backbone)})"
    if not marked:
        return text
    return f"{text} (untuned)" if len(marked) == measured else f"{text} (untuned: {', '.join(marked)})"


def suite_rows(entries: Entries, cells: Sequence[Cell], suite: Suite) -> str:
    """A row per (backbone, method): top-1 per task, the group means, both means, Params (M), PPT."""
    backbones = unique(cell.cfg.backbone.name for cell in cells)
    methods = unique(cell.cfg.method.name for cell in cells)
    for backbone in backbones:
        for method in methods:
            mine = {
                cell.cfg.data.name: cell
                for cell in cells
                if (cell.cfg.backbone.name, cell.cfg.method.name) == (backbone, method)
            }
            if mine:
                suite_row(entries, mine, suite, backbone, method, len(backbones))
    return "Method"


def suite_row(
    entries: Entries, mine: dict[str, Cell], suite: Suite, backbone: str, method: str, backbones: int
) -> None:
    """One row: `mine` holds its cells by task."""
    tasks = [task for task in suite.tasks if task.name in mine]
    first = mine[tasks[0].name]
    keys = {"method": method, "backbone": backbone, "weights": first.cfg.backbone.weights}
    measured = [task for task in tasks if cell_runs(entries.runs, mine[task.name].protocol).stat("top1").n]
    marked = [task.label for task in measured if untuned(entries.runs, mine[task.name])]
    row = row_label(method, backbone, backbones, marked, len(measured))
    for task in tasks:
        entries.measured(row, task.label, mine[task.name], "top1", dataset=task.name, **keys)
    per_task = {task.name: entry for task, entry in zip(tasks, entries.rows[-len(tasks) :], strict=True)}
    mixed = len({pipeline(cell) for cell in mine.values()}) > 1
    means = RowMeans(entries, row, mixed, method, backbone)
    groups = [
        means.add(group, [per_task[t.name] for t in tasks if t.group == group], group_size(suite, group))
        for group in suite.groups
        if any(task.group == group for task in tasks)
    ]
    if suite.groups:
        means.add("Mean (groups)", groups, len(suite.groups))
    everything = list(per_task.values())
    task_mean = means.add("Mean (tasks)" if suite.groups else "Mean", everything, len(suite.tasks))
    entries.counted(row, "Params (M)", first, "params_m", **keys)
    ours = ppt(task_mean["ours"], entries.rows[-1]["ours"] * 1e6)
    published = entries.paper_value("ppt", **keys)
    entries.add(row, "PPT", "ppt", "ppt", ours, published, protocol=task_mean["protocol"], **means.why)


class RowMeans:
    """A row's means (kind `average`), each of entries already added, with the stratified interval
    where they have theirs; none of ours where the row's cells differ in their image pipeline."""

    def __init__(self, entries: Entries, row: str, mixed: bool, method: str, backbone: str) -> None:
        self.entries, self.row, self.mixed = entries, row, mixed
        self.method, self.backbone = method, backbone
        self.why = {"status": "mixed image pipelines"} if mixed else {}

    def add(self, column: str, same: list[dict[str, Any]], expected: int) -> dict[str, Any]:
        ours, paper, protocol = mean_of(same, expected)
        ours = math.nan if self.mixed else ours
        versus = {"_versus": (column, self.backbone), "_method": self.method}
        stats = {} if math.isnan(ours) else self.entries.aggregated(same, expected, **versus)
        self.entries.add(
            self.row, column, "average", "top1", ours, paper, protocol=protocol, **stats, **self.why
        )
        return self.entries.rows[-1]


def improvements(entries: Entries) -> None:
    """A column `P(> <baseline>)` per row with tested per-task entries: rliable's probability of
    improvement over the baseline's row (same backbone) across the tasks, with its interval from the
    shared draws; none unless every task of the row has a bootstrap on both sides."""
    assert entries.significance is not None
    baseline = entries.significance.options.baseline
    tasks = [entry for entry in entries.rows if entry["kind"] == "metric" and "_boot" in entry]
    bases = {entry["_versus"]: entry for entry in tasks if entry["_method"] == baseline}
    column = f"P(> {label(baseline)})"
    for row in unique(entry["row"] for entry in entries.rows if entry["kind"] == "metric"):
        mine = [entry for entry in entries.rows if entry["row"] == row and entry["kind"] == "metric"]
        pairs = [(entry, bases.get(entry.get("_versus"))) for entry in mine]
        if any(entry.get("_method") == baseline for entry in mine):
            continue  # the baseline's own row
        if not pairs or any("_boot" not in entry or base is None for entry, base in pairs):
            entries.add(row, column, "improvement", "top1", math.nan, math.nan, stats="no interval")
            continue
        point, values = (
            probability_of_improvement(*zip(*[(of(entry), of(base)) for entry, base in pairs], strict=True))
            for of in (_observed, _per_run)
        )
        stats = entries.distributed(values)
        entries.add(row, column, "improvement", "top1", 100 * float(point), math.nan, **_percent(stats))


def _observed(entry: dict[str, Any]) -> np.ndarray:
    return entry["_boot"].observed[:, entry["_boot"].metrics.index(entry["metric"])]


def _per_run(entry: dict[str, Any]) -> np.ndarray:
    return entry["_boot"].per_run(entry["metric"])


def _percent(stats: dict[str, Any]) -> dict[str, Any]:
    """A probability's interval in percent, as its value is shown."""
    return {**stats, "ci_low": 100 * stats["ci_low"], "ci_high": 100 * stats["ci_high"]}


def build_suite_table(
    target: str,
    runs: pd.DataFrame,
    profile_name: str = "paper",
    overrides: Sequence[str] = (),
    significance: Significance | None = None,
) -> Table:
    """The suite table `target` (vtab, fgvc) of the profile's preset from `runs` (as `load_runs` gives
    them); `overrides` are added to every cell's composition, as on the sweep's command line; with
    `significance`, intervals, tests and the probability of improvement."""
    chosen = profile(profile_name)
    cells = chosen.cells(target, overrides)
    suite = suite_of_cells(cells, chosen.preset(target))
    entries = Entries(target, runs, PaperValues({}, PUBLISHED), significance=significance)
    row_name = suite_rows(entries, cells, suite)
    if significance is not None:
        improvements(entries)
    frame = entries.frame()
    groups = ", ".join(suite.groups)
    groups = GROUPS_NOTE.format(groups=groups, tasks=len(suite.tasks)) if suite.groups else ""
    notes = [MEANS_NOTE.format(suite=suite.label, groups=groups)]
    notes += [PPT_NOTE.format(mean="Mean (tasks)" if suite.groups else "Mean")]
    if frame["paper"].notna().any():
        notes += [PUBLISHED_NOTE]
    if frame["row"].str.contains("(untuned", regex=False).any():
        notes += [UNTUNED_NOTE]
    if significance is not None:
        notes += [IMPROVEMENT_NOTE.format(baseline=label(significance.options.baseline))]
    description, published = ". ".join(notes), "a published value, where the caption names its source"
    stats = None if significance is None else significance.options
    return Table(
        target,
        chosen.preset(target),
        row_name,
        frame,
        description=description,
        published=published,
        stats=stats,
    )
