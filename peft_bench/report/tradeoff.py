"""The trade-off figure of a preset: each dataset's main metric against trainable parameters, against
the training FLOPs per image and against peak memory, one point per method, the Pareto front (no other
method scores more for less) marked. Drawn on its own Agg canvas, as Figure 5, without pyplot's global
state.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from peft_bench.params import count
from peft_bench.report.aggregate import cell_runs
from peft_bench.report.cost import cell_cost, pareto_front
from peft_bench.report.figure import save_figure
from peft_bench.report.grid import Cell
from peft_bench.report.labels import label
from peft_bench.report.tables import TASK_METRICS, protocol_of_cell, unique

AXES = (
    ("params_m", "trainable backbone parameters (M)"),
    ("train_gflops", "training GFLOPs per image (counted)"),
    ("peak_mem_mb", "peak memory (MB)"),
)


@dataclass(frozen=True)
class Point:
    method: str
    score: float
    params_m: float
    peak_mem_mb: float
    device: str | None
    train_gflops: float = math.nan  # a training step's FLOPs per image: counted, the same on any device


@dataclass(frozen=True)
class TradeOff:
    paths: list[Path]
    missing: list[str]  # "<dataset>: <method>" of the cells drawn without a point


def points(cells: Sequence[Cell], runs: pd.DataFrame, metric: str, device: str | None = None) -> list[Point]:
    """One point per cell with a completed run: mean `metric`, counted parameters, median peak memory
    (of its runs on `device` where it has some), median training FLOPs per image (of all its runs)."""
    found = []
    for cell in cells:
        stat = cell_runs(runs, cell.protocol).stat(metric)
        if not stat.n:
            continue
        cost = cell_cost(runs, cell.protocol, protocol_of_cell(cell), prefer=device)
        found.append(
            Point(
                label(cell.cfg.method.name),
                stat.mean,
                count(cell.cfg)["backbone_trainable"] / 1e6,
                cost.get("peak_mem_bytes") / 2**20,
                cost.device,
                cost.counted.get("train_per_image") / 1e9,
            )
        )
    return found


def reference_device(cells: Sequence[Cell], runs: pd.DataFrame) -> str | None:
    """The device whose memory a panel shows: Full's, else the one most of the cells' costs come from."""
    costs = {c.cfg.method.name: cell_cost(runs, c.protocol, protocol_of_cell(c)) for c in cells}
    if "full" in costs and costs["full"].device:
        return costs["full"].device
    measured = sorted(cost.device for cost in costs.values() if cost.device)
    return max(measured, key=measured.count) if measured else None


def draw(axes: Axes, found: list[Point], x: str) -> None:
    """The points, labelled; the front's points filled and joined by a line."""
    shown = [p for p in found if not math.isnan(getattr(p, x))]
    coordinates = [(getattr(p, x), p.score) for p in shown]
    front = pareto_front(coordinates)
    for i, point in enumerate(shown):
        on_front = i in front
        axes.scatter(
            *coordinates[i], s=30, c="C3" if on_front else "none", edgecolors="C3" if on_front else "C0"
        )
        axes.annotate(point.method, coordinates[i], fontsize=6, xytext=(3, 3), textcoords="offset points")
    if front:
        axes.plot(*zip(*(coordinates[i] for i in front), strict=True), color="C3", lw=0.8, ls="--")
    if x == "params_m":
        axes.set_xscale("symlog", linthresh=0.01)  # Fixed's zero beside Full's millions


def write_tradeoff(cells: Sequence[Cell], runs: pd.DataFrame, stem: Path, preset: str) -> TradeOff:
    """`<stem>.png` and `<stem>.pdf`: a row per dataset of `cells`, its main metric (the task's first)
    against each of AXES."""
    datasets = unique(cell.cfg.data.name for cell in cells)
    figure = Figure(figsize=(12, 3.2 * len(datasets) + 0.8))
    FigureCanvasAgg(figure)
    grid = figure.subplots(len(datasets), len(AXES), squeeze=False)
    missing, elsewhere, uncounted = [], [], []
    for row, dataset in zip(grid, datasets, strict=True):
        mine = [cell for cell in cells if cell.cfg.data.name == dataset]
        metric = TASK_METRICS[mine[0].cfg.data.task][0]
        device = reference_device(mine, runs)
        found = points(mine, runs, metric, device)
        shown = {p.method for p in found}
        missing += [
            f"{label(dataset)}: {label(c.cfg.method.name)}"
            for c in mine
            if label(c.cfg.method.name) not in shown
        ]
        # Memory from one device only: a point measured on another has none in that panel.
        elsewhere += [
            f"{label(dataset)}: {p.method} ({p.device})" for p in found if p.device not in (device, None)
        ]
        uncounted += [f"{label(dataset)}: {p.method}" for p in found if math.isnan(p.train_gflops)]
        on_device = [p if p.device == device else replace(p, peak_mem_mb=math.nan) for p in found]
        for axes, (x, title) in zip(row, AXES, strict=True):
            draw(axes, on_device, x)
            axes.set_xlabel(f"{title} on {device}" if x == "peak_mem_mb" and device else title, fontsize=8)
            axes.set_ylabel(f"{label(dataset)} {label(metric)}", fontsize=8)
            axes.tick_params(labelsize=7)
    caption = (
        f"Trade-offs (preset {preset}): the mean metric over seeds against trainable backbone parameters "
        "(counted), a training step's FLOPs per image (counted by torch's FlopCounterMode on one batch: "
        "matmuls, convolutions and attention only; the same on any device) and the median peak memory "
        "of the runs on one device (Full's); filled, joined points: the Pareto front."
    )
    if elsewhere:
        caption += f" Memory measured on another device, not drawn: {'; '.join(elsewhere)}."
    if uncounted:
        caption += (
            f" No FLOPs counted (runs recorded before runs counted them), not drawn: {'; '.join(uncounted)}."
        )
    if missing:
        caption += f" No completed run: {'; '.join(missing)}."
    figure.text(0.02, 0.005, textwrap.fill(caption, 190), fontsize=6, va="bottom")
    figure.subplots_adjust(
        left=0.08, right=0.98, top=0.97, bottom=0.8 / figure.get_figheight() + 0.04, hspace=0.35
    )
    return TradeOff(save_figure(figure, stem), missing)
