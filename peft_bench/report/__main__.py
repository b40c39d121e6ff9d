"""`python -m peft_bench.report [key=value ...]`: the paper's Tables 1-5 and Figure 5 from the run store,
the extended table of every method, what each method costs, and the VTAB-1k and FGVC tables.

Keys (each optional):
  table=1|2|3|4|5|ext|fig5|cost|tradeoff|vtab|fgvc|all   what to build (default all); cost: the cost
                               table of Tables 1-3 and ext (cost<N>.*); tradeoff: their trade-off figures;
                               vtab, fgvc: a row per (backbone, method) of the preset vtab or fgvc, top-1
                               per task, the group means (VTAB), the mean of the group means and the mean
                               over tasks, the trainable parameters and V-PETL Bench's PPT, beside V-PETL
                               Bench's published values (ViT-B/16 in21k); printed too when asked by name
  results_dir=results          the run store
  out_dir=<results_dir>/report where the files go: table<N>.md/.tex/.csv, fig5.png/.pdf, cost<N>.*,
                               tradeoff<N>.png/.pdf (tables: N = 1 ... 5, _ext, _vtab, _fgvc; cost,
                               tradeoff: 1, 2, 3, _ext)
  cost=true|false              Tables 1-5 and ext with the cells' step time and peak memory (and ×Full),
                               and their training FLOPs ×Full
  profile=paper|mini           the presets table1..table5, fig5, vtab and fgvc, or table1_mini ...
                               vtab_mini (all: a suite table without a preset in the profile is skipped)
  override=<key>=<value>       added to every cell's config as on the sweep's command line, so that
                               cells match runs made with it (repeatable; e.g. override=trainer.max_steps=2)
  smooth=ema|rolling|none      Figure 5's smoothing, over window=<N> logged steps (default ema, 20)
  stats=true|false             intervals and significance marks in the tables that compare methods
                               (default true; false: the paper-style layout); see docs/statistics.md
  resamples=1000 level=0.95 stats_seed=0
                               the bootstrap's resamples, its intervals' confidence level (marks at
                               p < 1 - level) and the seed of its draws
  baseline=full                the method every cell is tested against (a registered method)
  correction=holm|none         the multiple-comparison correction, within each column

Exit status 0; 2 for a bad argument or a target that cannot be built (e.g. a missing preset), the
other targets being built all the same.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from peft_bench.errors import UserError
from peft_bench.methods import METHODS
from peft_bench.plugins import load_plugins
from peft_bench.report.build import TARGETS, Options, write_target
from peft_bench.report.figure import SMOOTHERS
from peft_bench.report.grid import composed_once
from peft_bench.report.profiles import profile
from peft_bench.report.significance import Significance, StatsOptions
from peft_bench.report.suite_table import SUITE_TABLES
from peft_bench.results.store import load_runs
from peft_bench.stats.bootstrap import Resampling
from peft_bench.stats.comparison import CORRECTIONS

KEYS = (
    "table",
    "results_dir",
    "out_dir",
    "profile",
    "override",
    "smooth",
    "window",
    "cost",
    "stats",
    "resamples",
    "level",
    "stats_seed",
    "baseline",
    "correction",
)


def parse(argv: Sequence[str]) -> tuple[list[str], Options]:
    """`key=value` arguments -> the targets to build and the options; UserError if one is wrong."""
    values: dict[str, str] = {}
    overrides: list[str] = []
    for argument in argv:
        key, sep, value = argument.partition("=")
        if not sep or key not in KEYS:
            raise UserError(f"Unknown argument {argument!r}: use key=value, a key among {', '.join(KEYS)}.")
        if key == "override":
            overrides.append(value)
        else:
            values[key] = value
    table = values.get("table", "all")
    if table not in (*TARGETS, "all"):
        raise UserError(f"Unknown table {table!r}: use one of {', '.join(TARGETS)} or all.")
    smooth, window = values.get("smooth", "ema"), values.get("window", "20")
    if smooth not in SMOOTHERS:
        raise UserError(f"Unknown smooth {smooth!r}: use one of {', '.join(SMOOTHERS)}.")
    if not window.isdigit() or int(window) < 1:
        raise UserError(f"window must be a positive whole number of steps, not {window!r}.")
    cost = switch(values, "cost", "false")
    profile(values.get("profile", "paper"))
    results_dir = Path(values.get("results_dir", "results"))
    options = Options(
        results_dir=results_dir,
        out_dir=Path(values.get("out_dir", results_dir / "report")),
        profile=values.get("profile", "paper"),
        overrides=tuple(overrides),
        smooth=smooth,
        window=int(window),
        cost_columns=cost,
        stats=stats_options(values) if switch(values, "stats", "true") else None,
    )
    return list(TARGETS) if table == "all" else [table], options


def switch(values: dict[str, str], key: str, default: str) -> bool:
    value = values.get(key, default)
    if value not in ("true", "false"):
        raise UserError(f"{key} must be true or false, not {value!r}.")
    return value == "true"


def stats_options(values: dict[str, str]) -> StatsOptions:
    """The statistics' keys, checked: resamples, level, stats_seed, baseline, correction."""
    resamples, seed = values.get("resamples", "1000"), values.get("stats_seed", "0")
    if not resamples.isdigit() or int(resamples) < 1:
        raise UserError(
            f"resamples must be a positive whole number, not {resamples!r} (e.g. resamples=1000)."
        )
    if not seed.isdigit():
        raise UserError(f"stats_seed must be a non-negative whole number, not {seed!r}.")
    try:
        level = float(values.get("level", "0.95"))
    except ValueError:
        level = math.nan
    if not 0 < level < 1:
        raise UserError(
            f"level must be a confidence level between 0 and 1, not {values['level']!r} (e.g. 0.95)."
        )
    correction = values.get("correction", "holm")
    if correction not in CORRECTIONS:
        raise UserError(f"Unknown correction {correction!r}: use one of {', '.join(CORRECTIONS)}.")
    load_plugins()
    baseline = values.get("baseline", "full")
    if baseline not in METHODS:
        raise UserError(f"Unknown baseline method {baseline!r}: use one of {', '.join(METHODS)}.")
    return StatsOptions(Resampling(int(resamples), level, int(seed)), baseline, correction)


def available(targets: list[str], options: Options) -> list[str]:
    """`all`'s targets: a suite table only where its preset exists in the profile (FGVC has no mini)."""
    chosen = profile(options.profile)
    kept = [t for t in targets if t not in SUITE_TABLES or chosen.has_preset(t)]
    for target in targets:
        if target not in kept:
            note = f"profile {options.profile} has no preset {chosen.preset(target)}; skipped"
            print(f"note: {target}: {note}", file=sys.stderr)
    return kept


def main(argv: Sequence[str] | None = None) -> int:
    try:
        targets, options = parse(sys.argv[1:] if argv is None else argv)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    named = len(targets) == 1  # a suite table asked for by name is printed as well
    targets = targets if named else available(targets, options)
    runs = load_runs(options.results_dir)
    significance = None if options.stats is None else Significance(options.stats)
    status = 0
    with composed_once():
        for target in targets:
            try:
                paths, warnings = write_target(target, runs, options, significance)
            except (UserError, HydraException, OmegaConfBaseException) as error:
                print(f"error: {target}: {error}", file=sys.stderr)
                status = 2
                continue
            if named and target in SUITE_TABLES:
                print(next(path for path in paths if path.suffix == ".md").read_text())
            print(f"{target}: {', '.join(str(path) for path in paths)}")
            for warning in warnings:
                print(f"warning: {warning}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
