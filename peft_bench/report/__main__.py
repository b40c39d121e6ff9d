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
  cost=true|false              Tables 1-5 and ext with the cells' step time and peak memory (and ×Full)
  profile=paper|mini           the presets table1..table5, fig5, vtab and fgvc, or table1_mini ...
                               vtab_mini (all: a suite table without a preset in the profile is skipped)
  override=<key>=<value>       added to every cell's config as on the sweep's command line, so that
                               cells match runs made with it (repeatable; e.g. override=trainer.max_steps=2)
  smooth=ema|rolling|none      Figure 5's smoothing, over window=<N> logged steps (default ema, 20)

Exit status 0; 2 for a bad argument or a target that cannot be built (e.g. a missing preset), the
other targets being built all the same.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from peft_bench.errors import UserError
from peft_bench.report.build import TARGETS, Options, write_target
from peft_bench.report.figure import SMOOTHERS
from peft_bench.report.profiles import profile
from peft_bench.report.suite_table import SUITE_TABLES
from peft_bench.results.store import load_runs

KEYS = ("table", "results_dir", "out_dir", "profile", "override", "smooth", "window", "cost")


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
    cost = values.get("cost", "false")
    if cost not in ("true", "false"):
        raise UserError(f"cost must be true or false, not {cost!r}.")
    profile(values.get("profile", "paper"))
    results_dir = Path(values.get("results_dir", "results"))
    options = Options(
        results_dir=results_dir,
        out_dir=Path(values.get("out_dir", results_dir / "report")),
        profile=values.get("profile", "paper"),
        overrides=tuple(overrides),
        smooth=smooth,
        window=int(window),
        cost_columns=cost == "true",
    )
    return list(TARGETS) if table == "all" else [table], options


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
    status = 0
    for target in targets:
        try:
            paths, warnings = write_target(target, runs, options)
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
