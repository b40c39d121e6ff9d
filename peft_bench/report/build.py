"""One report target (a table or Figure 5) from the run store into files: what the CLI calls."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from peft_bench.report.figure import write_figure5
from peft_bench.report.profiles import profile
from peft_bench.report.render import write_table
from peft_bench.report.tables import TABLES, build_table

TARGETS = (*TABLES, "fig5")


@dataclass(frozen=True)
class Options:
    results_dir: Path = Path("results")
    out_dir: Path = Path("results/report")
    profile: str = "paper"
    overrides: tuple[str, ...] = ()  # added to every cell's composition, as on the sweep's command line
    smooth: str = "ema"  # Figure 5: ema | rolling | none
    window: int = 20  # Figure 5: the EMA's span, or the rolling mean's width, in logged steps


def write_target(target: str, runs: pd.DataFrame, options: Options) -> tuple[list[Path], list[str]]:
    """Build `target` from `runs` (as `load_runs` gives them); return the files written and
    warnings (Figure 5's cells drawn without a line)."""
    if target == "fig5":
        chosen = profile(options.profile)
        preset = chosen.preset(target)
        cells = chosen.cells(target, options.overrides)
        figure = write_figure5(
            cells, runs, options.out_dir / "fig5", preset, how=options.smooth, window=options.window
        )
        return figure.paths, [f"fig5: no completed run for {item}" for item in figure.missing]
    return write_table(build_table(target, runs, options.profile, options.overrides), options.out_dir), []
