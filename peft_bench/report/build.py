"""One report target (a table or Figure 5) from the run store into files: what the CLI calls."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from peft_bench.report.figure import write_figure5
from peft_bench.report.profiles import profile
from peft_bench.report.render import write_table
from peft_bench.report.suite_table import SUITE_TABLES, build_suite_table
from peft_bench.report.tables import METHOD_TABLES, TABLES, build_cost_table, build_table
from peft_bench.report.tradeoff import write_tradeoff

# cost: the cost table of each table with a row per method; tradeoff: its trade-off figure;
# vtab, fgvc: the suite tables
TARGETS = (*TABLES, "fig5", "cost", "tradeoff", *SUITE_TABLES)


@dataclass(frozen=True)
class Options:
    results_dir: Path = Path("results")
    out_dir: Path = Path("results/report")
    profile: str = "paper"
    overrides: tuple[str, ...] = ()  # added to every cell's composition, as on the sweep's command line
    smooth: str = "ema"  # Figure 5: ema | rolling | none
    window: int = 20  # Figure 5: the EMA's span, or the rolling mean's width, in logged steps
    cost_columns: bool = False  # Tables 1-5: add the cells' step time and peak memory (and ×Full)


def write_target(target: str, runs: pd.DataFrame, options: Options) -> tuple[list[Path], list[str]]:
    """Build `target` from `runs` (as `load_runs` gives them); return the files written and
    warnings (the figures' cells drawn without a line or point)."""
    chosen = profile(options.profile)
    if target == "fig5":
        cells = chosen.cells(target, options.overrides)
        figure = write_figure5(
            cells,
            runs,
            options.out_dir / "fig5",
            chosen.preset(target),
            how=options.smooth,
            window=options.window,
        )
        return figure.paths, [f"fig5: no completed run for {item}" for item in figure.missing]
    if target == "cost":
        tables = [
            build_cost_table(table, runs, options.profile, options.overrides) for table in METHOD_TABLES
        ]
        return [path for table in tables for path in write_table(table, options.out_dir)], []
    if target == "tradeoff":
        paths, warnings = [], []
        for table in METHOD_TABLES:
            stem = options.out_dir / f"tradeoff{'_' if table == 'ext' else ''}{table}"
            figure = write_tradeoff(chosen.cells(table, options.overrides), runs, stem, chosen.preset(table))
            paths += figure.paths
            warnings += [f"{stem.name}: no completed run for {item}" for item in figure.missing]
        return paths, warnings
    if target in SUITE_TABLES:
        # A final stage's cells take the values chosen in the store (tuning.chosen), as its runs did.
        store = f"paths.results_dir={quoted(str(options.results_dir))}"
        table = build_suite_table(target, runs, options.profile, (store, *options.overrides))
    else:
        table = build_table(target, runs, options.profile, options.overrides, options.cost_columns)
    return write_table(table, options.out_dir), []


def quoted(value: str) -> str:
    """`value` as a Hydra override's quoted string: a path with `,` or `=` stays one value."""
    return "'" + value.replace("'", "\\'") + "'"
