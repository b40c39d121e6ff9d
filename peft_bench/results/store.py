"""The results store: one folder per run under `<results_dir>/runs/<run_id>/`.

Files (the contract that the reporter and scripts rely on):
  config.yaml    the fully resolved config
  metrics.json   status, final test metrics, the selection metric, parameter counts, provenance
  history.csv    one row per logged optimiser step: step, epoch, loss, lr
  manifest.json  the trainable tensors by name and size, grouped as backbone / neck / head
Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pandas as pd

from peft_bench.results.atomic import write_json_atomic, write_text_atomic

RUNS = "runs"


def run_dir(results_dir: str | Path, run_id: str) -> Path:
    return Path(results_dir) / RUNS / run_id


def read_record(directory: Path) -> dict[str, Any] | None:
    path = directory / "metrics.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


def write_record(directory: Path, record: dict[str, Any]) -> None:
    write_json_atomic(directory / "metrics.json", record)


def write_history(directory: Path, rows: list[dict[str, Any]]) -> None:
    """`history.csv`: step, epoch, mean loss since the previous row, lr (and fp16's loss scale)."""
    fp16 = [column for column in ("loss_scale", "skipped_steps") if rows and column in rows[0]]
    columns = ["step", "epoch", "loss", "lr", *fp16]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(directory / "history.csv", buffer.getvalue())


def load_runs(results_dir: str | Path) -> pd.DataFrame:
    """Every run record under `results_dir` as one row; nested fields flattened with dots
    (`metrics.top1`, `params.trainable_percent`, ...)."""
    records = []
    for path in sorted((Path(results_dir) / RUNS).glob("*/metrics.json")):
        record = json.loads(path.read_text())
        record["record_dir"] = str(path.parent)
        records.append(record)
    if not records:
        return pd.DataFrame(columns=["run_id", "status", "method", "dataset", "task", "backbone", "seed"])
    return pd.json_normalize(records, max_level=1)


def load_history(record_dir: str | Path) -> pd.DataFrame:
    return pd.read_csv(Path(record_dir) / "history.csv")
