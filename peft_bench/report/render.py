"""A table's entries as text: Markdown and LaTeX for reading (each cell `ours [paper]`), CSV for
computing (one row per entry, every number at full precision). Small formatters of our own, so
that neither tabulate nor jinja2 (pandas' optional backends) is a dependency."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from peft_bench.report.aggregate import OK
from peft_bench.report.labels import label
from peft_bench.report.tables import Table
from peft_bench.results.atomic import write_text_atomic
from peft_bench.stats.spread import chance_span

LEGEND = (
    "Each cell: ours, the mean ± sample std over n completed seeds (parameters: counted from the "
    "config), then [{published}]; missing / running / failed: no completed run of the cell's protocol."
)
RANKS_LEGEND = (
    "Average rank: the method's rank on each dataset (1 the best), averaged; Mean score: the mean of its "
    "headline metrics. The critical-difference diagram (cd_*.png) joins the methods that the Nemenyi test "
    "cannot tell apart."
)
STATS_LEGEND = (
    "CI: the {level}% percentile bootstrap interval over the cell's seeds and its test images ({resamples} "
    "resamples, seed {seed}; a mean's: the mean of its cells' resamples, a stratified bootstrap); a Δ's CI "
    "is the paired interval of the difference, on the same test images and seeds. *: beyond noise, "
    "p < {alpha} in a paired bootstrap test against {baseline}'s cell of the same test set (a Δ: against "
    "the cell it is taken from) {correction}; no mark: not shown to differ. CI n/a: a run of the cell stored "
    "no per-sample outcomes (recorded before they were kept), so no interval is given. docs/statistics.md "
    "says why these choices."
)
SEPARATION = (
    "Seeds: {columns}. (By chance: the expected span, in seed stds, of that many means over the fewest "
    "seeds shown when the methods do not differ; a span of {separates:g} or more stds is taken to "
    "separate them.)"
)
# Spans of the method means, in median seed stds, from which a column is said to separate its methods.
SEPARATES = 3.0
STATUS_WIDTH = 60  # a failure's message is cut here in the readable formats; the CSV keeps it whole
LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "Δ": r"$\Delta$",
    "<": r"$<$",  # OT1 text mode sets < and > as inverted marks
    ">": r"$>$",
}


def number(value: float, signed: bool = False) -> str:
    return "-" if math.isnan(value) else f"{value:+.2f}" if signed else f"{value:.2f}"


def interval_text(entry: pd.Series, signed: bool) -> str:
    """`CI low to high` where the entry has an interval, `CI n/a` where statistics are on and it has
    none; "" where they are off or the entry is not measured."""
    if not isinstance(entry["stats"], str):
        return ""
    if entry["stats"] != OK:
        return "CI n/a"
    return f"CI {number(entry['ci_low'], signed)} to {number(entry['ci_high'], signed)}"


def ours_text(entry: pd.Series) -> str:
    signed = entry["kind"] == "delta"
    mark = "*" if entry["beyond"] is True else ""
    interval = interval_text(entry, signed)
    if entry["kind"] != "metric":
        value = number(entry["ours"], signed)
        return f"{value} ({interval}){mark}" if interval and not math.isnan(entry["ours"]) else value
    if entry["status"] != OK:
        status = entry["status"]
        return status if len(status) <= STATUS_WIDTH else status[: STATUS_WIDTH - 3] + "..."
    spread = "" if math.isnan(entry["std"]) else f" ± {entry['std']:.2f}"
    details = ", ".join(filter(None, [f"n={int(entry['n'])}", interval]))
    return f"{entry['ours']:.2f}{spread} ({details}){mark}"


def cell_text(entry: pd.Series) -> str:
    paper = entry["paper"]
    if math.isnan(paper):
        return ours_text(entry)
    return f"{ours_text(entry)} [{number(paper, signed=entry['kind'] == 'delta')}]"


def display(table: Table) -> pd.DataFrame:
    """Rows and columns as in the paper (first-appearance order); each cell `ours [paper]`, with its
    protocol named where the table's cells differ in it."""
    entries = table.entries
    texts = entries.assign(text=entries.apply(cell_text, axis=1))
    if len(table.protocols) > 1:
        named = texts["protocol"].notna()
        texts.loc[named, "text"] += " (" + texts.loc[named, "protocol"] + ")"
    frame = texts.pivot(index="row", columns="column", values="text")
    frame = frame.reindex(index=pd.unique(entries["row"]), columns=pd.unique(entries["column"])).fillna("")
    frame.index.name, frame.columns.name = table.row_name, None
    return frame


def grid(table: Table) -> list[list[str]]:
    """The header row, then the body rows, each led by its row label."""
    frame = display(table)
    rows = [[str(row), *values] for row, values in zip(frame.index, frame.to_numpy().tolist(), strict=True)]
    return [[str(frame.index.name), *frame.columns], *rows]


def legend(table: Table) -> str:
    if table.kind == "ranks":
        return RANKS_LEGEND
    text = " ".join(filter(None, [LEGEND.format(published=table.published), separation(table.entries)]))
    if table.stats is None:
        return text
    stats, resampling = table.stats, table.stats.resampling
    correction = (
        "after Holm's correction over the column's comparisons"
        if stats.correction == "holm"
        else "without a correction for multiple comparisons"
    )
    return (
        text
        + " "
        + STATS_LEGEND.format(
            level=f"{100 * resampling.level:g}",
            resamples=f"{resampling.resamples:,}",
            seed=resampling.seed,
            baseline=label(stats.baseline),
            alpha=f"{stats.alpha:g}",
            correction=correction,
        )
    )


def separation(entries: pd.DataFrame) -> str:
    """Whether the methods' means in each column measured over several seeds lie further apart than
    their seeds' scatter: the span of the means (max - min) over the median sample std of the cells,
    beside the span expected by chance. Rows of different backbones are judged apart, so that a
    backbone's lead is not taken for a method's."""
    seeded = entries[(entries["kind"] == "metric") & (entries["n"] >= 2)]
    columns = []
    for column, in_column in seeded.groupby("column", sort=False):
        backbones = in_column["backbone"].nunique()
        for backbone, cells in in_column.groupby("backbone", sort=False):
            text = _separation_of(f"{column} ({label(backbone)})" if backbones > 1 else column, cells)
            if text:
                columns.append(text)
    return SEPARATION.format(columns="; ".join(columns), separates=SEPARATES) if columns else ""


def _separation_of(column: str, cells: pd.DataFrame) -> str:
    noise = cells["std"].median()
    if len(cells) < 2 or not noise > 0:
        return ""
    span = cells["ours"].max() - cells["ours"].min()
    ratio = round(span / noise, 1)  # judged as shown
    verdict = "separates the methods" if ratio >= SEPARATES else "does not separate the methods"
    low, high = int(cells["n"].min()), int(cells["n"].max())
    seeds = f"{low}" if low == high else f"{low} to {high}"
    chance = chance_span(len(cells), low)
    return (
        f"{column}: the means of {len(cells)} methods ({seeds} seeds each) span {span:.2f}, "
        f"{ratio:.1f}x the median seed std {noise:.2f} ({chance:.1f}x by chance); it {verdict}"
    )


def markdown(table: Table) -> str:
    header, *body = grid(table)
    return "\n".join([f"**{table.caption}**", "", *markdown_lines(header, body), "", legend(table), ""])


def markdown_lines(header: list[str], body: list[list[str]]) -> list[str]:
    """A Markdown table's lines: the header, its rule and a line per row."""
    return [_markdown_row(header), "|" + "|".join(["---"] * len(header)) + "|", *map(_markdown_row, body)]


def _markdown_row(cells: list[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(char, char) for char in text)


def latex(table: Table) -> str:
    """A booktabs table environment."""
    header, *body = grid(table)
    return "\n".join(
        [
            r"\begin{table}",
            r"\centering",
            rf"\caption{{{latex_escape(table.caption + ' ' + legend(table))}}}",
            rf"\label{{tab:{table.name}}}",
            rf"\begin{{tabular}}{{l{'r' * (len(header) - 1)}}}",
            r"\toprule",
            _latex_row(header),
            r"\midrule",
            *map(_latex_row, body),
            r"\bottomrule",
            r"\end{tabular}",
            r"\end{table}",
            "",
        ]
    )


def _latex_row(cells: list[str]) -> str:
    return " & ".join(map(latex_escape, cells)) + r" \\"


def csv(table: Table) -> str:
    return table.entries.assign(table=table.target, preset=table.preset).to_csv(index=False)


def write_table(table: Table, out_dir: Path) -> list[Path]:
    """`<out_dir>/<name>.md`, `.tex` and `.csv` (table1, ..., cost1, ...), each written atomically."""
    paths = []
    for suffix, text in (("md", markdown(table)), ("tex", latex(table)), ("csv", csv(table))):
        path = out_dir / f"{table.name}.{suffix}"
        write_text_atomic(path, text)
        paths.append(path)
    return paths
