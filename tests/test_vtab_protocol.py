"""The tuned protocol end to end on the embedded VTAB: a tune sweep scored on val200 that never builds
the test split, the choice written where the final stage reads it, the final runs taking it (and
saying so), and a run without a choice saying that it ran the recipe's defaults."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from conftest import records, run_cli
from hydra import compose
from omegaconf import OmegaConf

from peft_bench.errors import UserError
from peft_bench.plugins import config_session
from peft_bench.results.protocol import protocol_hash, protocol_name
from peft_bench.tune import main as tune_main
from peft_bench.tuning import Choice, apply_chosen, write_choices

CELL = ("dataset=vtab_mini_position", "method=lora", "backbone=vit_micro")
TINY = (
    "data.train_size=16",
    "data.val_size=8",
    "data.test_size=8",
    "data.batch_size=8",
    "trainer.epochs=1",
    "trainer.threads=1",
    "trainer.progress=false",
)


def composed(*overrides: str):
    with config_session():
        return compose(config_name="config", overrides=list(overrides))


@pytest.mark.parametrize(
    "overrides, name",
    [
        ((), "harness"),
        (("protocol=paper",), "paper"),
        (("dataset=vtab_mini_count",), "vtab"),
        (("dataset=vtab_mini_count", "protocol=vtab_tune"), "vtab-tune"),
        (("dataset=vtab_mini_count", "protocol=test_max"), "test-max"),
    ],
)
def test_each_protocol_is_named_in_records_and_tables(overrides: tuple[str, ...], name: str) -> None:
    assert protocol_name(composed(*overrides)) == name


def test_the_final_stage_takes_the_chosen_values_and_hashes_them(tmp_path: Path) -> None:
    chosen = tmp_path / "tuned.yaml"
    overrides = (*CELL, f"paths.results_dir={tmp_path}")
    untuned = composed(*overrides)
    note = apply_chosen(untuned)
    assert note["values"] is None and "the recipe's defaults ran" in note["untuned"]
    assert untuned.trainer.lr == 1e-3

    choice = Choice(
        "vtab_mini_position", "lora", "vit_micro", {"trainer.lr": 0.01, "method.rank": 4}, "top1", 50.0, 2, 1
    )
    write_choices(chosen, [choice])
    tuned = composed(*overrides)
    note = apply_chosen(tuned)
    assert (tuned.trainer.lr, tuned.method.rank) == (0.01, 4)
    assert note["values"] == {"trainer.lr": 0.01, "method.rank": 4} and note["from"] == str(chosen)
    assert protocol_hash(tuned) == protocol_hash(composed(*overrides, "trainer.lr=0.01", "method.rank=4"))
    assert protocol_hash(tuned) != protocol_hash(untuned)
    rows = list(csv.DictReader(chosen.with_suffix(".csv").open()))
    assert rows[0]["trainer.lr"] == "0.01" and rows[0]["method.rank"] == "4"

    # Another cell's choice is merged in; the first one stays.
    other = Choice("vtab_mini_size", "full", "vit_micro", {"trainer.lr": 0.001}, "top1", 40.0, 2, 1)
    write_choices(chosen, [other])
    assert [row["dataset"] for row in yaml.safe_load(chosen.read_text())] == [
        "vtab_mini_position",
        "vtab_mini_size",
    ]


def test_a_corrupt_choice_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "tuned.yaml").write_text("- {dataset: x, bogus: 1}\n")
    cfg = composed(*CELL, f"paths.results_dir={tmp_path}")
    with pytest.raises(UserError, match=r"Cannot read the chosen hyperparameters .* peft_bench\.tune"):
        apply_chosen(cfg)


@pytest.mark.parametrize("selection", ["test", "none"])
def test_a_grid_point_is_scored_on_val_only(selection: str, tmp_path: Path) -> None:
    overrides = ("protocol=vtab_tune", f"data.selection_split={selection}", f"paths.results_dir={tmp_path}")
    cfg = composed(*CELL, *overrides)
    with pytest.raises(UserError, match=rf"data.selection_split={selection}: .* test-set selection"):
        apply_chosen(cfg)


def test_the_chooser_refuses_a_sweep_that_is_not_a_tune_stage(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert tune_main(["experiment=vtab_mini_tune", "protocol=test_max", f"paths.results_dir={tmp_path}"]) == 2
    assert "composes tuning.stage=none with data.selection_split=test" in capsys.readouterr().err
    assert not (tmp_path / "tuned.yaml").exists()


@pytest.mark.slow
def test_tune_choose_final_on_the_embedded_vtab(results_dir: Path) -> None:
    tune = run_cli("-m", "experiment=vtab_mini_tune", *CELL, *TINY, results_dir=results_dir)
    assert tune.returncode == 0, tune.stderr[-3000:]
    tuned_runs = records(results_dir)
    assert len(tuned_runs) == 2 and {r["protocol"] for r in tuned_runs} == {"vtab-tune"}
    for record in tuned_runs:  # scored on val200; the test split was never evaluated
        assert record["metrics"] == {} and record["split_sizes"] == {"train": 16, "val": 8, "test": None}
        assert record["tuning"] == {"stage": "tune", "values": None}

    arguments = ["experiment=vtab_mini_tune", *CELL, *TINY, f"paths.results_dir={results_dir}"]
    assert tune_main(arguments) == 0
    (row,) = yaml.safe_load((results_dir / "tuned.yaml").read_text())
    best = max(tuned_runs, key=lambda r: r["val_history"][-1]["top1"])  # the first on a tie, as the grid
    lrs = {
        r["run_id"]: OmegaConf.load(results_dir / "runs" / r["run_id"] / "config.yaml").trainer.lr
        for r in tuned_runs
    }
    assert row["values"] == {"trainer.lr": lrs[best["run_id"]]} and row["points"] == 2
    assert row["score"] == pytest.approx(best["val_history"][-1]["top1"])

    final = run_cli("-m", "experiment=vtab_mini", *CELL, "trainer.seed=0", *TINY, results_dir=results_dir)
    assert final.returncode == 0, final.stderr[-3000:]
    (record,) = [r for r in records(results_dir) if r["protocol"] == "vtab"]
    assert record["tuning"]["values"] == row["values"] and record["split_sizes"]["train"] == 24
    assert record["split_sizes"]["test"] == 8 and "top1" in record["metrics"]
    config = OmegaConf.load(results_dir / "runs" / record["run_id"] / "config.yaml")
    assert config.trainer.lr == row["values"]["trainer.lr"]
    stamp = (results_dir / "runs" / record["run_id"] / "metrics.json").stat().st_mtime_ns
    again = run_cli("-m", "experiment=vtab_mini", *CELL, "trainer.seed=0", *TINY, results_dir=results_dir)
    assert again.returncode == 0 and "already completed" in again.stdout
    assert (results_dir / "runs" / record["run_id"] / "metrics.json").stat().st_mtime_ns == stamp


def test_committed_mini_choices_are_chosen_again_from_their_tune_records(tmp_path: Path) -> None:
    """results/mini/store holds the embedded VTAB's tune runs and the choices made from them: the
    chooser, run on those records, writes the same choices."""
    store = Path(__file__).resolve().parents[1] / "results" / "mini" / "store"
    chosen = tmp_path / "tuned.yaml"
    arguments = ["experiment=vtab_mini_tune", f"paths.results_dir={store}", f"tuning.chosen={chosen}"]
    assert tune_main(arguments) == 0
    assert yaml.safe_load(chosen.read_text()) == yaml.safe_load((store / "tuned.yaml").read_text())
