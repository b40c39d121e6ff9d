"""The suite tables (`table=vtab`, `table=fgvc`) against a synthetic run store of the embedded VTAB:
records with the protocol hashes of preset vtab_mini's cells, the final stage's choices in the store's
tuned.yaml, and every mean, parameter count and PPT computed here another way."""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import pytest

from peft_bench.data.suites import FGVC, VTAB_1K, VTAB_MINI, Suite
from peft_bench.params import count
from peft_bench.report.__main__ import available, main
from peft_bench.report.build import Options
from peft_bench.report.grid import Cell
from peft_bench.report.paper import PaperValues
from peft_bench.report.profiles import profile
from peft_bench.report.suite_table import PUBLISHED, build_suite_table, ppt, row_label, suite_rows
from peft_bench.report.tables import Entries, mean_of
from peft_bench.results.protocol import run_id_for
from peft_bench.results.store import load_runs, run_dir, write_record
from peft_bench.tuning import Choice, write_choices

# Two methods on one backbone, one seed: 14 of vtab_mini's cells (a swept key given again replaces its list).
OVERRIDES = ("method=full,lora", "backbone=vit_micro", "trainer.seed=0")
# top-1 per task (the suite's order); Full's Objects has two seeds, LoRA has no Size of its protocol.
FULL = {"objects": (80.0, 90.0), "textures": (70.0,), "count": (50.0,), "distance": (40.0,)}
FULL |= {"orientation": (30.0,), "position": (60.0,), "size": (20.0,)}
LORA = {"objects": 75.0, "textures": 65.0, "count": 45.0, "distance": 35.0, "orientation": 25.0}
LORA |= {"position": 55.0}
CHOSEN = {"trainer.lr": 0.01}


@dataclass(frozen=True)
class Store:
    results: Path
    cells: dict[tuple[str, str], Cell]  # (method, task without its prefix) -> cell


def write_run(
    results: Path, cell: Cell, seed: int, top1: float, tuning: dict | None, protocol: str = ""
) -> None:
    """A completed run's metrics.json with the fields the reporter reads (`tuning` None: a record from
    before tuned protocols); `protocol` replaces the cell's hash (a run of another protocol)."""
    cfg = cell.cfg.copy()
    cfg.trainer.seed = seed
    run_id = run_id_for(cfg)
    record = {"run_id": run_id, "status": "completed", "seed": seed, "metrics": {"top1": top1}}
    record |= {"protocol_hash": protocol or cell.protocol, "started": "2025-01-01T00:00:00+00:00"}
    write_record(run_dir(results, run_id), record | ({"tuning": tuning} if tuning else {}))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """Full: every task tuned (Objects' second seed an older record, without a `tuning` field). LoRA:
    Textures untuned (no choice: the recipe's defaults), Size only under another protocol (missing)."""
    results = tmp_path_factory.mktemp("suites") / "results"
    tuned_yaml = results / "tuned.yaml"
    keys = [("full", task.name) for task in VTAB_MINI.tasks]
    keys += [("lora", task.name) for task in VTAB_MINI.tasks if task.name != "vtab_mini_textures"]
    write_choices(tuned_yaml, [Choice(task, m, "vit_micro", CHOSEN, "top1", 50.0, 2, 1) for m, task in keys])
    # The store's choices enter the cells' protocols, as they entered the runs'.
    cells = profile("mini").cells("vtab", (f"paths.results_dir={results}", *OVERRIDES))
    by = {(c.cfg.method.name, c.cfg.data.name.removeprefix("vtab_mini_")): c for c in cells}
    assert len(by) == 14 and by["lora", "size"].cfg.trainer.lr == 0.01
    tuned = {"stage": "final", "values": CHOSEN, "from": str(tuned_yaml)}
    untuned = {"stage": "final", "values": None, "from": str(tuned_yaml), "untuned": "no values chosen"}
    for task, values in FULL.items():
        for seed, top1 in enumerate(values):
            write_run(results, by["full", task], seed, top1, tuned if seed == 0 else None)
    for task, top1 in LORA.items():
        write_run(results, by["lora", task], 0, top1, untuned if task == "textures" else tuned)
    write_run(results, by["lora", "size"], 0, 99.0, tuned, protocol="another00000")
    return Store(results, by)


@pytest.fixture(scope="module")
def report(store: Store, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`python -m peft_bench.report table=vtab profile=mini stats=false` (the layout; statistics:
    tests/test_statistics.py) on the store: its out_dir and its stdout (read here, once for the
    module: capsys is per test)."""
    out = tmp_path_factory.mktemp("report")
    argv = ["table=vtab", "profile=mini", f"results_dir={store.results}", f"out_dir={out}", "stats=false"]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main([*argv, *(f"override={o}" for o in OVERRIDES)]) == 0
    return out, stdout.getvalue()


def entries(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "table_vtab.csv").set_index(["row", "column"])


def test_group_means_both_averages_params_and_ppt(store: Store, report: tuple[Path, str]) -> None:
    table = entries(report[0])
    full = {task: sum(values) / len(values) for task, values in FULL.items()}
    natural, specialized = full["objects"], full["textures"]
    structured = sum(full[t] for t in ("count", "distance", "orientation", "position", "size")) / 5
    tasks_mean = sum(full.values()) / 7
    expected = {
        "Objects": 85.0,
        "Natural": natural,
        "Specialized": specialized,
        "Structured": 40.0,
        "Mean (groups)": (natural + specialized + structured) / 3,
        "Mean (tasks)": tasks_mean,
    }
    for column, value in expected.items():
        assert table.loc[("Full", column), "ours"] == pytest.approx(value), column
    objects = table.loc[("Full", "Objects")]
    assert objects["n"] == 2 and objects["std"] == pytest.approx(math.sqrt(50))
    params = count(store.cells["full", "size"].cfg)["backbone_trainable"]
    assert table.loc[("Full", "Params (M)"), "ours"] == pytest.approx(params / 1e6)
    trade_off = tasks_mean / 100 * math.e ** (-math.log(params / 1e7 + 1, 10))
    assert table.loc[("Full", "PPT"), "ours"] == pytest.approx(trade_off)
    assert table["paper"].isna().all()  # nothing published beside the embedded suite
    assert set(table["protocol"].dropna()) == {"vtab"}


def test_a_missing_task_gives_no_average_and_untuned_cells_are_marked(report: tuple[Path, str]) -> None:
    table = entries(report[0])
    row = "LoRA (untuned: Textures)"  # Textures ran the recipe's defaults; Full's older record is no mark
    assert set(table.index.get_level_values("row")) == {"Full", row}
    assert table.loc[(row, "Size"), "status"] == "missing"  # its one run is of another protocol
    assert (table.loc[(row, "Natural"), "ours"], table.loc[(row, "Specialized"), "ours"]) == (75.0, 65.0)
    for column in ("Structured", "Mean (groups)", "Mean (tasks)", "PPT"):
        assert math.isnan(table.loc[(row, column), "ours"]), column
    assert table.loc[(row, "Params (M)"), "ours"] > 0
    caption = (report[0] / "table_vtab.md").read_text().splitlines()[0]
    assert "(untuned): the row's cells (or those named) ran without values chosen on val" in caption


def test_the_table_is_printed_and_names_both_means(report: tuple[Path, str]) -> None:
    out, stdout = report
    assert (out / "table_vtab.md").read_text() in stdout
    header = "| Method | Objects | Textures | Count | Distance | Orientation | Position | Size | Natural |"
    assert header in stdout
    assert "| Specialized | Structured | Mean (groups) | Mean (tasks) | Params (M) | PPT |" in stdout
    assert "| Full | 85.00 ± 7.07 (n=2) | 70.00 (n=1) | 50.00 (n=1) |" in stdout
    assert "| 20.00 (n=1) | 85.00 | 70.00 | 40.00 | 65.00 | 50.71 | 1.22 | 0.48 |" in stdout
    assert "| LoRA (untuned: Textures) | 75.00 (n=1) | 65.00 (n=1) |" in stdout
    assert "Mean (groups) = the mean of the group means" in stdout
    assert "Mean (tasks) = the plain mean over the 7 tasks (V-PETL Bench's)" in stdout
    assert "then [a published value, where the caption names its source]" in stdout  # not the paper's
    assert f"vtab: {out / 'table_vtab.md'}" in stdout
    assert r"\label{tab:table_vtab}" in (out / "table_vtab.tex").read_text()


def test_a_suite_without_groups_has_one_mean(store: Store) -> None:
    """FGVC's layout (no groups), on the embedded tasks with their groups taken away."""
    flat = Suite("flat", "Flat", tuple(replace(task, group="") for task in VTAB_MINI.tasks))
    built = Entries("fgvc", load_runs(store.results), PaperValues({}, PUBLISHED))
    suite_rows(built, [cell for (method, _), cell in store.cells.items() if method == "full"], flat)
    frame = built.frame().set_index("column")
    assert list(frame.index[-3:]) == ["Mean", "Params (M)", "PPT"]
    assert not {"Natural", "Mean (groups)", "Mean (tasks)"} & set(frame.index)
    assert frame.loc["Mean", "ours"] == pytest.approx((85 + 70 + 50 + 40 + 30 + 60 + 20) / 7)


def test_a_mean_needs_every_entry_under_one_protocol() -> None:
    one = [
        {"ours": 60.0, "paper": 50.0, "protocol": "vtab"},
        {"ours": 70.0, "paper": 52.0, "protocol": "vtab"},
    ]
    assert mean_of(one, 2) == (65.0, 51.0, "vtab")
    ours, paper, protocol = mean_of([one[0], {**one[1], "protocol": "test-max"}], 2)
    assert math.isnan(ours) and paper == 51.0 and protocol is None
    assert all(math.isnan(value) for value in mean_of(one, 3)[:2])  # a task short: no mean at all


def test_row_labels() -> None:
    assert row_label("lora", "vit_micro", 2, [], 7) == "LoRA (ViT-micro)"
    assert row_label("lora", "vit_micro", 1, ["DTD"], 1) == "LoRA (untuned)"


def test_published_values_reproduce_their_means_and_ppt() -> None:
    """Each published row's README mean is the mean of its tasks, and its PPT V-PETL's formula of both."""
    published = pd.read_csv(PUBLISHED)
    assert published["source"].notna().all() and set(published["protocol"]) == {"test-max"}
    assert set(published["seeds"]) == {1}
    ours = {"full", "fixed", "bitfit", "vpt", "adapter", "lora", "adaptformer", "ssf"}  # those V-PETL lists
    assert set(published["method"]) == ours
    for (table, method), rows in published.groupby(["table", "method"]):
        values = rows.set_index("metric")["value"]
        top1 = rows.loc[rows["metric"] == "top1", "value"]
        assert len(top1) == {"vtab": 19, "fgvc": 5}[table]
        assert top1.mean() == pytest.approx(values["mean_tasks"], abs=0.005), (table, method)
        if "ppt" in values:  # none for Full, as in the README
            trade_off = ppt(values["mean_tasks"], values["params_m"] * 1e6)
            assert trade_off == pytest.approx(values["ppt"], abs=0.01), (table, method)
    assert round(ppt(72.25, 0.29e6), 2) == 0.71  # V-PETL's LoRA row


def test_published_values_sit_beside_vit_b_in21k() -> None:
    """Under profile=paper the bracketed group means are those vtab.md recomputed from V-PETL's table."""
    table = build_suite_table("vtab", load_runs(Path("no-store")), "paper", ("method=lora", "trainer.seed=0"))
    lora = table.entries.set_index(["row", "column"]).loc["LoRA", "paper"]
    assert list(lora.index[:19]) == [task.label for task in VTAB_1K.tasks]
    means = {"Natural": 79.49, "Specialized": 84.55, "Structured": 59.78, "Mean (groups)": 74.60}
    for column, value in {**means, "Mean (tasks)": 72.25}.items():
        assert lora[column] == pytest.approx(value, abs=0.005), column
    assert (lora["Params (M)"], lora["PPT"]) == (0.29, 0.71)
    assert "test-max" in table.caption and "one seed" in table.caption
    other = {"dataset": "vtab_dtd", "method": "lora", "backbone": "vit_b", "weights": "augreg_in21k"}
    assert math.isnan(PaperValues({}, PUBLISHED).value("vtab", "top1", **other))


def test_fgvc_has_its_five_sets_and_one_mean() -> None:
    table = build_suite_table("fgvc", load_runs(Path("no-store")), "paper", ("method=lora", "trainer.seed=0"))
    lora = table.entries.set_index(["row", "column"]).loc["LoRA", "paper"]
    assert list(lora.index) == [*(task.label for task in FGVC.tasks), "Mean", "Params (M)", "PPT"]
    assert (round(lora["Mean"], 2), lora["Params (M)"], lora["PPT"]) == (84.78, 0.77, 0.82)  # V-PETL's row


def test_all_skips_a_suite_without_a_preset(capsys: pytest.CaptureFixture) -> None:
    assert available(["1", "vtab", "fgvc"], Options(profile="mini")) == ["1", "vtab"]
    assert "note: fgvc: profile mini has no preset fgvc_mini; skipped" in capsys.readouterr().err
