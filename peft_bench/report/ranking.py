"""Methods ranked across datasets (`table=ranks`): per group of tables, each method's average rank
over the datasets, the Friedman test, the Nemenyi critical difference, and the critical-difference
diagram (`peft_bench.stats.ranks`).

A block is a dataset, scored by its task's headline metric (AP_box, AP50, mIoU, top-1: the first of
`TASK_METRICS`) or, in a suite, a task's top-1; a method's score on it is its cell's mean over seeds.
The tests need every method on every block, so the largest complete design is kept and what is left
out is named in the caption.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from peft_bench.report.aggregate import OK
from peft_bench.report.figure import save_figure
from peft_bench.report.paper import PaperValues
from peft_bench.report.tables import TASK_METRICS, Entries, Table
from peft_bench.stats.ranks import Ranking, complete

HEADLINES = {metrics[0] for metrics in TASK_METRICS.values()}
RANKS_NOTE = (
    "Methods ranked over {blocks} datasets ({names}) by each one's headline metric (mean over seeds; rank 1 "
    "best, ties sharing their mean rank): the average rank, and the mean score. Friedman test over the "
    "ranks: p = {friedman}. Nemenyi critical difference at alpha = {alpha:g}: {cd:.2f} (two average ranks "
    "further apart differ beyond noise; Demšar 2006){left_out}"
)


def block_scores(tables: list[Table]) -> pd.DataFrame:
    """Blocks (the tables' headline columns) x methods (their rows): each measured cell's mean."""
    frames = [table.entries for table in tables]
    entries = pd.concat(frames) if frames else pd.DataFrame()
    measured = entries[(entries["kind"] == "metric") & entries["metric"].isin(HEADLINES)]
    measured = measured[measured["status"] == OK]
    scores = measured.pivot_table(index="column", columns="row", values="ours", aggfunc="first", sort=False)
    rows = pd.unique(entries["row"]) if len(entries) else []
    return scores.reindex(columns=[row for row in rows if row in scores.columns]).astype(float)


def ranks_table(name: str, preset: str, tables: list[Table], alpha: float) -> tuple[Table, Ranking] | None:
    """The ranks table of `tables` (named `ranks_<name>`) and its ranking; None without two methods
    on two blocks."""
    scores, methods_out, blocks_out = complete(block_scores(tables))
    if scores.shape[0] < 2 or scores.shape[1] < 2:
        return None
    entries = Entries(name, pd.DataFrame(), PaperValues({}))
    ranking = Ranking(scores, alpha)
    protocols = {protocol for table in tables for protocol in table.protocols}
    protocol = protocols.pop() if len(protocols) == 1 else None
    for method, rank in ranking.average_ranks.items():
        mean = float(scores[method].mean())
        entries.add(method, "Average rank", "rank", "rank", float(rank), math.nan, protocol=protocol)
        entries.add(method, "Mean score", "average", "headline", mean, math.nan, protocol=protocol)
    left = [
        f"{what} {', '.join(names)}"
        for what, names in (("methods", methods_out), ("datasets", blocks_out))
        if names
    ]
    description = RANKS_NOTE.format(
        blocks=scores.shape[0],
        names=", ".join(scores.index),
        friedman=f"{ranking.friedman_p:.3g}",
        alpha=alpha,
        cd=ranking.critical_difference,
        left_out=f". Left out, for want of a complete design: {'; '.join(left)}" if left else "",
    )
    return Table(name, preset, "Method", entries.frame(), description=description, kind="ranks"), ranking


def write_cd_diagram(ranking: Ranking, stem: Path, preset: str) -> list[Path]:
    """`<stem>.png` and `.pdf`: the critical-difference diagram, its test results in the title. Unlike
    the other figures, its bytes may differ between runs of the same store: scikit-posthocs draws
    the crossbars in the order of a set of names, which Python's string hashing varies."""
    figure = Figure(figsize=(8, 1.2 + 0.22 * ranking.scores.shape[1]))
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0.22, 0.02, 0.56, 0.78))
    ranking.draw(axes)
    title = (
        f"{preset}: average ranks over {ranking.scores.shape[0]} datasets (1 = best); "
        f"Friedman p = {ranking.friedman_p:.3g}; "
        f"Nemenyi CD = {ranking.critical_difference:.2f} at alpha = {ranking.alpha:g}"
    )
    figure.suptitle(textwrap.fill(title, 110), fontsize=8)
    return save_figure(figure, stem)
