"""Shared test helpers. The Hugging Face hub is offline in every test: nothing is downloaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
REPO = Path(__file__).resolve().parents[1]

# A seconds-long embedded run: 256 training scenes, 2 epochs, no progress bar.
SMOKE = ["experiment=smoke", "trainer.threads=1"]
# A few 64 px detection scenes, for RetinaNet runs that take seconds.
TINY_DETECTION_DATA = [
    "data.train_size=4",
    "data.val_size=2",
    "data.test_size=2",
    "data.batch_size=2",
    "data.image_size=64",
    "head.min_size=[64]",
    "head.max_size=64",
    "trainer.threads=1",
]
# Two RetinaNet steps on them: a method's run end to end.
TINY_DETECTION = [
    "dataset=shapes_det",
    "backbone=swin_micro",
    *TINY_DETECTION_DATA,
    "trainer.max_steps=2",
    "trainer.epochs=1",
]


def cli_env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", WANDB_MODE="disabled")
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def run_cli(*overrides: str, results_dir: Path, module: str = "peft_bench", timeout: int = 600):
    """Run `python -m <module> <overrides>` writing into `results_dir`; return the process. (Hydra's
    flags, `-m` or `--cfg job`, come first: its command line takes the overrides in one run.)"""
    command = [sys.executable, "-m", module, *overrides, f"paths.results_dir={results_dir}"]
    return subprocess.run(command, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=timeout)


def records(results_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((results_dir / "runs").glob("*/metrics.json"))]


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    return tmp_path / "results"
