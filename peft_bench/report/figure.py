"""Figure 5: the training loss against the iteration, one line per cell (method) of the fig5
preset, from the completed runs' history.csv: each run smoothed, then the mean over seeds step by
step, with a band of ± one sample std over seeds.

Cells without a completed run are named in the figure's caption, not fatal: the figure shows what
there is. The figure is drawn on its own Agg canvas, without pyplot, so that no global backend
state changes (a notebook's inline plots keep working).
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from peft_bench.report.aggregate import OK, cell_runs
from peft_bench.report.grid import Cell
from peft_bench.report.labels import label
from peft_bench.results.atomic import write_atomic
from peft_bench.results.store import load_history

SMOOTHERS = ("ema", "rolling", "none")


@dataclass(frozen=True)
class Figure5:
    paths: list[Path]
    missing: list[str]  # "<method> (<status>)" of the cells drawn without a line


def smooth(loss: pd.Series, how: str, window: int) -> pd.Series:
    """`ema`: exponential moving average of span `window`; `rolling`: mean of the last `window`."""
    if how == "ema":
        return loss.ewm(span=window, adjust=False).mean()
    if how == "rolling":
        return loss.rolling(window, min_periods=1).mean()
    return loss


def loss_band(record_dirs: Iterable[str], how: str, window: int) -> tuple[pd.Series, pd.Series]:
    """Each run's loss per step, smoothed; their mean and sample std (NaN with one run) over the
    runs that logged that step."""
    curves = [smooth(load_history(d).set_index("step")["loss"], how, window) for d in record_dirs]
    together = pd.concat(curves, axis=1).sort_index()
    mean = together.mean(axis=1).dropna()
    return mean, together.std(axis=1).reindex(mean.index)


def write_figure5(
    cells: Sequence[Cell], runs: pd.DataFrame, stem: Path, preset: str, how: str = "ema", window: int = 20
) -> Figure5:
    """`<stem>.png` and `<stem>.pdf`, each written atomically."""
    figure = Figure(figsize=(7, 4.8))
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0.1, 0.25, 0.85, 0.68))
    missing = []
    for cell in cells:
        name = label(cell.cfg.method.name)
        summary = cell_runs(runs, cell.protocol)
        if summary.status != OK:
            missing.append(f"{name} ({summary.status})")
            continue
        loss, spread = loss_band(summary.completed["record_dir"], how, window)
        (line,) = axes.plot(loss.index, loss.to_numpy(), label=f"{name} (n={len(summary.completed)})")
        if spread.notna().any():
            low, high = (loss - spread).to_numpy(), (loss + spread).to_numpy()
            axes.fill_between(loss.index, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    if axes.lines:
        axes.legend()
    axes.set_xlabel("iteration")
    axes.set_ylabel("training loss")
    smoothing = "not smoothed" if how == "none" else f"smoothed: {how}, window {window}"
    caption = (
        f"Figure 5 (preset {preset}): training loss, each run {smoothing}; the line: the mean over seeds, "
        "the band: ± one sample std over seeds (cells of one seed have none)."
    )
    if missing:
        caption += f" No completed run: {'; '.join(missing)}."
    figure.text(0.02, 0.02, textwrap.fill(caption, 110), fontsize=7, va="bottom")
    return Figure5(save_figure(figure, stem), missing)


def save_figure(figure: Figure, stem: Path) -> list[Path]:
    """`<stem>.png` and `<stem>.pdf`, each written atomically; no creation date in the PDF, so that
    the same runs give the same bytes."""
    metadata = {"png": {}, "pdf": {"CreationDate": None}}
    paths = [stem.with_suffix(f".{suffix}") for suffix in metadata]
    for path in paths:
        fmt = path.suffix[1:]
        write_atomic(
            path, lambda file, fmt=fmt: figure.savefig(file, format=fmt, dpi=150, metadata=metadata[fmt])
        )
    return paths
