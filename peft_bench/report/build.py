"""One report target (a table or Figure 5) from the run store into files: what the CLI calls."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from peft_bench.data.suites import suite_of
from peft_bench.report.figure import write_figure5
from peft_bench.report.profiles import profile
from peft_bench.report.ranking import ranks_table, write_cd_diagram
from peft_bench.report.render import write_table
from peft_bench.report.significance import Significance, StatsOptions
from peft_bench.report.suite_table import SUITE_TABLES, build_suite_table
from peft_bench.report.tables import METHOD_TABLES, TABLES, Table, build_cost_table, build_table
from peft_bench.report.tradeoff import write_tradeoff

# cost: the cost table of each table with a row per method; tradeoff: its trade-off figure;
# vtab, fgvc: the suite tables
# ranks: methods ranked over the datasets of Tables 1-3 (ranks_paper) and over each suite's tasks
TARGETS = (*TABLES, "fig5", "cost", "tradeoff", *SUITE_TABLES, "ranks")
RANKED = {"paper": ("1", "2", "3"), **{suite: (suite,) for suite in SUITE_TABLES}}


@dataclass(frozen=True)
class Options:
    results_dir: Path = Path("results")
    out_dir: Path = Path("results/report")
    profile: str = "paper"
    overrides: tuple[str, ...] = ()  # added to every cell's composition, as on the sweep's command line
    smooth: str = "ema"  # Figure 5: ema | rolling | none
    window: int = 20  # Figure 5: the EMA's span, or the rolling mean's width, in logged steps
    cost_columns: bool = False  # Tables 1-5: add the cells' step time and peak memory (and ×Full)
    stats: StatsOptions | None = field(default_factory=StatsOptions)  # None: the paper's layout


def write_target(
    target: str, runs: pd.DataFrame, options: Options, significance: Significance | None = None
) -> tuple[list[Path], list[str]]:
    """Build `target` from `runs` (as `load_runs` gives them); return the files written and
    warnings (the figures' cells drawn without a line or point). `significance` (made from
    `options.stats` where not given) is shared by the targets of one report, so that a cell is
    resampled once."""
    if significance is None and options.stats is not None:
        significance = Significance(options.stats)
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
    if target == "ranks":
        return write_ranks(runs, options)
    return write_table(build(target, runs, options, significance), options.out_dir), []


def build(target: str, runs: pd.DataFrame, options: Options, significance: Significance | None) -> Table:
    """Table `target` (1-5, ext or a suite) of the options' profile."""
    if target in SUITE_TABLES:
        # A final stage's cells take the values chosen in the store (tuning.chosen), as its runs did.
        store = f"paths.results_dir={quoted(str(options.results_dir))}"
        return build_suite_table(target, runs, options.profile, (store, *options.overrides), significance)
    return build_table(target, runs, options.profile, options.overrides, options.cost_columns, significance)


def write_ranks(runs: pd.DataFrame, options: Options) -> tuple[list[Path], list[str]]:
    """`ranks_<group>.*` and `cd_<group>.png/pdf` for Tables 1-3 and each suite with a preset in the
    profile; a warning instead for a group too small to rank (e.g. a suite not run)."""
    chosen = profile(options.profile)
    alpha = 0.05 if options.stats is None else options.stats.alpha
    paths, warnings = [], []
    datasets = runs["dataset"].dropna() if "dataset" in runs else []
    suites_run = {getattr(suite_of(str(dataset)), "name", None) for dataset in datasets}
    for group, targets in RANKED.items():
        if not all(target in TABLES or chosen.has_preset(target) for target in targets):
            continue
        if group in SUITE_TABLES and chosen.preset(group) not in suites_run:
            continue  # no run of the suite (its preset is named as it) in the store: nothing to rank
        tables = [build(target, runs, options, None) for target in targets]
        preset = ", ".join(chosen.preset(target) for target in targets)
        ranked = ranks_table(group, preset, tables, alpha)
        if ranked is None:
            warnings.append(f"ranks_{group}: too few datasets or methods with measured cells to rank")
            continue
        table, ranking = ranked
        paths += write_table(table, options.out_dir)
        paths += write_cd_diagram(ranking, options.out_dir / f"cd_{group}", preset)
    return paths, warnings


def quoted(value: str) -> str:
    """`value` as a Hydra override's quoted string: a path with `,` or `=` stays one value."""
    return "'" + value.replace("'", "\\'") + "'"
