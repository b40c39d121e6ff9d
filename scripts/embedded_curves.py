"""Does each embedded task train to where its metric levels off? Per mini task: the untrained model's
test metric, Full's and Fixed's, and their validation curves, from the run records of the mini store.

    python scripts/embedded_curves.py results/mini/store --out results/mini/curves

Writes `<out>.md` (a table) and `<out>.png` / `.pdf` (a panel per task). The runs are the mini presets' seed-0
cells and, for "untrained", the same command as Full's with `trainer.max_steps=0` (the test split
scored before any step); a missing run is named with the command that makes it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from hydra import compose
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from peft_bench.plugins import config_session, load_plugins
from peft_bench.report.figure import save_figure
from peft_bench.report.render import markdown_lines
from peft_bench.report.tables import TASK_METRICS
from peft_bench.results.atomic import write_text_atomic
from peft_bench.results.protocol import protocol_hash
from peft_bench.results.store import load_runs

# Each embedded task of the paper's tables and the mini preset that runs it.
TASKS = {
    "shapes_single": "table3_mini",
    "digits": "table3_mini",
    "shapes": "table3_mini",
    "shapes_det": "table2_mini",
    "shapes_seg": "table2_mini",
    "shapes_inst": "table1_mini",
}
UNTRAINED = "trainer.max_steps=0"


def overrides(dataset: str, method: str, *extra: str) -> list[str]:
    return [f"experiment={TASKS[dataset]}", f"dataset={dataset}", f"method={method}", *extra]


def record(runs: pd.DataFrame, args: list[str]) -> pd.Series | None:
    """The completed run of `args`' protocol with the lowest seed, or None."""
    with config_session():
        wanted = protocol_hash(compose(config_name="config", overrides=args))
    if runs.empty:
        return None
    found = runs[(runs["protocol_hash"] == wanted) & (runs["status"] == "completed")]
    return None if found.empty else found.sort_values("seed").iloc[0]


def text(value: object) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("results/mini/curves"))
    args = parser.parse_args(argv)
    load_plugins()
    runs = load_runs(args.results_dir)
    columns = 3
    rows_of_panels = -(-len(TASKS) // columns)
    figure = Figure(figsize=(3.4 * columns, 2.8 * rows_of_panels))
    FigureCanvasAgg(figure)
    rows, missing = [], []
    panels = figure.subplots(rows_of_panels, columns, squeeze=False).flat
    for axes, dataset in zip(panels, TASKS, strict=False):
        commands = {
            "full": overrides(dataset, "full"),
            "fixed": overrides(dataset, "fixed"),
            "untrained": overrides(dataset, "full", UNTRAINED),
        }
        found = {name: record(runs, command) for name, command in commands.items()}
        missing += [" ".join(commands[name]) for name, run in found.items() if run is None]
        ran = [run for run in found.values() if run is not None]
        if not ran:
            continue
        task = ran[0]["task"]
        metric = TASK_METRICS[task][0]
        row = {"dataset": dataset, "metric": metric}
        for name, run in found.items():
            row[name] = None if run is None else run[f"metrics.{metric}"]
            if run is not None and name != "untrained":
                curve = pd.DataFrame(run["val_history"])
                axes.plot(curve["epoch"], curve[metric], marker="o", ms=3, label=f"{name} (val)")
        if found["full"] is not None:
            curve = pd.DataFrame(found["full"]["val_history"])[metric]
            tail = max(1, len(curve) // 5)  # the last fifth of the epochs
            if len(curve) > tail:
                row["full_val_gain_last_fifth"] = float(curve.iloc[-1] - curve.iloc[-1 - tail])
            row["full_wall_min"] = found["full"]["wall_s"] / 60
        if row["untrained"] is not None:
            axes.axhline(row["untrained"], ls="--", c="grey", label="untrained (test)")
        axes.set_title(dataset, fontsize=9)
        axes.set_xlabel("epoch", fontsize=8)
        axes.set_ylabel(metric, fontsize=8)
        axes.legend(fontsize=6)
        rows.append(row)
    figure.tight_layout()
    save_figure(figure, args.out)
    table = pd.DataFrame(rows)
    shown = [[text(value) for value in row] for row in table.itertuples(index=False)]
    lines = markdown_lines(list(table.columns), shown)
    write_text_atomic(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print(table.to_string(index=False))
    for command in missing:
        print(f"missing: python -m peft_bench {command} paths.results_dir={args.results_dir}")


if __name__ == "__main__":
    main()
