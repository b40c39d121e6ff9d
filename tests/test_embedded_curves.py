"""scripts/embedded_curves.py: per embedded task, the untrained, Full's and Fixed's test metric and
their validation curves, read from the committed mini store."""

from __future__ import annotations

import runpy
from pathlib import Path

import pandas as pd

from peft_bench.results.store import load_runs

REPO = Path(__file__).resolve().parents[1]
STORE = REPO / "results" / "mini" / "store"


def test_the_table_holds_the_mini_cells_and_the_untrained_runs(tmp_path: Path) -> None:
    script = runpy.run_path(str(REPO / "scripts" / "embedded_curves.py"))
    script["main"]([str(STORE), "--out", str(tmp_path / "curves")])
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    lines = (tmp_path / "curves.md").read_text().splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {
        row[0]: dict(zip(header, row, strict=True))
        for row in ([cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:])
    }
    assert set(rows) == set(script["TASKS"])
    runs = load_runs(STORE)
    for name, args in (("full", ()), ("untrained", (script["UNTRAINED"],))):
        run = script["record"](runs, script["overrides"]("shapes", "full", *args))
        assert rows["shapes"][name] == f"{run['metrics.top1']:.2f}"
    untrained = script["record"](runs, script["overrides"]("shapes", "full", script["UNTRAINED"]))
    assert untrained["steps"] == 0 and not untrained["val_history"]
    assert float(rows["shapes"]["untrained"]) < float(rows["shapes"]["full"])
    assert pd.notna(float(rows["shapes"]["full_val_gain_last_fifth"]))
