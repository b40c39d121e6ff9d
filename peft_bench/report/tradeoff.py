"""The trade-off figure of a preset: each dataset's main metric against trainable parameters, against
the training FLOPs per image and against the training step's memory, one point per method, the Pareto
front (no other method scores more for less) marked. FLOPs and memory are counted at a run's start-up
(`engine.flops`, `engine.step_memory`), the same on any device, so every point of a panel compares
with every other whatever device ran it. Drawn on its own Agg canvas, as Figure 5, without pyplot's global
state.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
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
    ("step_mem_mb", "training step memory (MB, accounted)"),
)


@dataclass(frozen=True)
class Point:
    method: str
    score: float
    params_m: float
    train_gflops: float  # a training step's FLOPs per image: counted, the same on any device
    step_mem_mb: float  # a training step's memory account (`engine.step_memory`): the same on any device


@dataclass(frozen=True)
class TradeOff:
    paths: list[Path]
    missing: list[str]  # "<dataset>: <method>" of the cells drawn without a point


def points(cells: Sequence[Cell], runs: pd.DataFrame, metric: str) -> list[Point]:
    """One point per cell with a completed run: mean `metric`, counted parameters, and the medians
    over its runs of the training FLOPs per image and of the step memory account."""
    found = []
    for cell in cells:
        stat = cell_runs(runs, cell.protocol).stat(metric)
        if not stat.n:
            continue
        counted = cell_cost(runs, cell.protocol, protocol_of_cell(cell)).counted
        found.append(
            Point(
                label(cell.cfg.method.name),
                stat.mean,
                count(cell.cfg)["backbone_trainable"] / 1e6,
                counted.get("train_per_image") / 1e9,
                counted.get("step_memory_bytes") / 2**20,
            )
        )
    return found


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
    missing, uncounted = [], []
    for row, dataset in zip(grid, datasets, strict=True):
        mine = [cell for cell in cells if cell.cfg.data.name == dataset]
        metric = TASK_METRICS[mine[0].cfg.data.task][0]
        found = points(mine, runs, metric)
        shown = {p.method for p in found}
        missing += [
            f"{label(dataset)}: {label(c.cfg.method.name)}"
            for c in mine
            if label(c.cfg.method.name) not in shown
        ]
        uncounted += [f"{label(dataset)}: {p.method}" for p in found if math.isnan(p.step_mem_mb)]
        for axes, (x, title) in zip(row, AXES, strict=True):
            draw(axes, found, x)
            axes.set_xlabel(title, fontsize=8)
            axes.set_ylabel(f"{label(dataset)} {label(metric)}", fontsize=8)
            axes.tick_params(labelsize=7)
    caption = (
        f"Trade-offs (preset {preset}): the mean metric over seeds against trainable backbone parameters "
        "(counted), a training step's FLOPs per image (counted by torch's FlopCounterMode on one batch: "
        "matmuls, convolutions and attention only) and what a training step holds (accounted: weights, "
        "trainable gradients, AdamW's moments and the activations saved for backward), both the same on "
        "any device; filled, joined points: the Pareto front."
    )
    if uncounted:
        caption += (
            " Not counted (runs recorded before runs counted them; python -m peft_bench.flops fills them), "
            f"not drawn in those panels: {'; '.join(uncounted)}."
        )
    if missing:
        caption += f" No completed run: {'; '.join(missing)}."
    figure.text(0.02, 0.005, textwrap.fill(caption, 190), fontsize=6, va="bottom")
    figure.subplots_adjust(
        left=0.08, right=0.98, top=0.97, bottom=0.8 / figure.get_figheight() + 0.04, hspace=0.35
    )
    return TradeOff(save_figure(figure, stem), missing)
