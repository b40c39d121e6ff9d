"""Sweeps end to end: a mini preset's grid through parallel joblib jobs, skipped when run again,
re-run where a cell failed, and reported; and the launcher configs of conf/hydra/launcher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import records, run_cli
from hydra import compose

from peft_bench.report.grid import config_session
from peft_bench.report.tables import build_table
from peft_bench.results.store import load_runs

TABLE3_MINI_DATASETS = ("shapes_single", "digits", "shapes")
PAPER_METHODS = (
    "full",
    "fixed",
    "bitfit",
    "normtuning",
    "partial1",
    "adapter",
    "lora",
    "adaptformer",
    "lorand",
    "mona",
)
# Seconds per cell: two optimiser steps on 32 scenes (digits keeps its fixed split), small val/test.
TINY = (
    "data.train_size=32",
    "data.val_size=16",
    "data.test_size=16",
    "trainer.max_steps=2",
    "trainer.threads=1",
    "trainer.progress=false",
)
SWEEP = ("-m", "experiment=table3_mini", "hydra/launcher=local_cpu", *TINY)


def record_stamps(results_dir: Path) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in (results_dir / "runs").glob("*/metrics.json")}


@pytest.mark.slow
def test_table3_mini_sweep_runs_once_reruns_failed_cells_and_reports(results_dir: Path) -> None:
    first = run_cli(*SWEEP, results_dir=results_dir, timeout=1200)
    assert first.returncode == 0, first.stderr[-3000:]
    done = records(results_dir)
    assert {(r["dataset"], r["method"]) for r in done} == {
        (dataset, method)
        for dataset in TABLE3_MINI_DATASETS
        for method in PAPER_METHODS  # the preset's ten
    }
    assert len(done) == 30 and all(r["status"] == "completed" for r in done)

    stamps = record_stamps(results_dir)
    again = run_cli(*SWEEP, results_dir=results_dir, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("is already completed") == 30
    assert record_stamps(results_dir) == stamps  # nothing new, nothing rewritten

    failed = sorted(stamps)[0]
    record = json.loads(failed.read_text())
    failed.write_text(json.dumps({**record, "status": "failed", "error": "RuntimeError: injected"}))
    stamps = record_stamps(results_dir)
    third = run_cli(*SWEEP, results_dir=results_dir, timeout=600)
    assert third.returncode == 0, third.stderr[-3000:]
    assert third.stdout.count("is already completed") == 29
    assert [path for path, stamp in record_stamps(results_dir).items() if stamps[path] != stamp] == [failed]
    assert json.loads(failed.read_text())["status"] == "completed"

    table = build_table("3", load_runs(results_dir), "mini", overrides=TINY)
    measured = table.entries[table.entries["kind"] == "metric"]
    assert len(measured) == 60 and (measured["status"] == "ok").all()  # top-1 and top-5 of 30 cells
    assert measured["paper"].notna().all()  # each embedded dataset sits beside its paper column
    assert {"shapes_single (Flowers102) top-1", "digits (OxfordPets) top-1"} <= set(measured["column"])


@pytest.mark.parametrize(
    ("launcher", "target", "expected"),
    [
        ("local_cpu", "hydra_joblib_launcher.joblib_launcher.JoblibLauncher", {"n_jobs": 2}),
        ("slurm_gpu", "hydra_submitit_launcher.submitit_launcher.SlurmLauncher", {"gpus_per_node": 1}),
    ],
)
def test_launcher_configs_extend_the_plugins(launcher: str, target: str, expected: dict) -> None:
    with config_session():
        overrides = [f"hydra/launcher={launcher}"]
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == f"hydra_plugins.{target}"
    assert {key: cfg.hydra.launcher[key] for key in expected} == expected
