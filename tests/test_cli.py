"""The command line, end to end: records, resume after SIGKILL, failures, errors, torchrun."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, SMOKE, cli_env, records, run_cli


def test_embedded_run_writes_a_complete_record_and_is_not_repeated(results_dir: Path) -> None:
    first = run_cli(*SMOKE, "method=fixed", results_dir=results_dir)
    assert first.returncode == 0, first.stderr
    [record] = records(results_dir)
    assert record["status"] == "completed"
    assert set(record["metrics"]) == {"top1", "top5"}
    assert 0.0 <= record["metrics"]["top1"] <= record["metrics"]["top5"] <= 100.0
    assert record["params"]["backbone_trainable"] == 0
    assert record["best"]["metric"] == "top1"
    assert record["protocol"] == "harness"  # the embedded default: the best checkpoint on a val split
    assert record["metrics"] == record["metrics_selected"] and set(record["metrics_last"]) == {"top1", "top5"}
    directory = results_dir / "runs" / record["run_id"]
    assert (directory / "config.yaml").read_text().startswith("method:")
    with open(directory / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "epoch", "loss", "lr"]
    assert [int(r["step"]) for r in rows] == list(range(1, record["steps"] + 1))
    cost = record["cost"]  # measured while the run trained (engine/cost.py)
    assert cost["steps_timed"] == record["steps"]
    assert cost["train_img_s"] == pytest.approx(record["batch"]["global"] / cost["step_s"])
    assert cost["eval_img_s"] > 0 and cost["mem_source"] == "peak_rss"
    assert cost["peak_mem_bytes"] > 50 * 2**20  # the process's resident set: torch alone is more
    assert cost["delta_bytes"] == (directory / "model.safetensors").stat().st_size
    assert (cost["device"], cost["precision"]) == (record["device"], record["precision"])

    mtime = (directory / "metrics.json").stat().st_mtime_ns
    again = run_cli(*SMOKE, "method=fixed", results_dir=results_dir)
    assert again.returncode == 0
    assert "already completed" in again.stdout
    assert (directory / "metrics.json").stat().st_mtime_ns == mtime


def test_sigkilled_run_resumes_to_the_same_metrics(results_dir: Path, tmp_path: Path) -> None:
    overrides = [*SMOKE, "method=full", "trainer.epochs=4", "data.train_size=1024"]
    reference_dir = tmp_path / "reference"
    reference = run_cli(*overrides, results_dir=reference_dir)
    assert reference.returncode == 0, reference.stderr
    [expected] = records(reference_dir)

    command = [sys.executable, "-m", "peft_bench", f"paths.results_dir={results_dir}", *overrides]
    process = subprocess.Popen(
        command, cwd=REPO, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    checkpoint = results_dir / "runs" / expected["run_id"] / "checkpoints" / "last.pt"
    deadline = time.time() + 300
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed mid-training"
    [killed] = records(results_dir)
    assert killed["status"] == "running"

    resumed = run_cli(*overrides, results_dir=results_dir)
    assert resumed.returncode == 0, resumed.stderr
    [record] = records(results_dir)
    assert record["status"] == "completed"
    assert record["metrics"] == expected["metrics"]
    assert record["val_history"] == expected["val_history"]
    history = (results_dir / "runs" / record["run_id"] / "history.csv").read_text()
    assert history == (reference_dir / "runs" / record["run_id"] / "history.csv").read_text()


def test_diverging_loss_fails_the_run_with_the_reason(results_dir: Path) -> None:
    result = run_cli(
        *SMOKE, "method=full", "trainer.lr=1e30", "trainer.clip_grad_norm=null", results_dir=results_dir
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    [record] = records(results_dir)
    assert record["status"] == "failed"
    assert "loss became" in record["error"]


def test_missing_dataset_names_the_path_and_layout(results_dir: Path) -> None:
    started = time.time()
    result = run_cli("dataset=flowers102", "data.root=/nonexistent", results_dir=results_dir, timeout=60)
    assert time.time() - started < 30
    assert result.returncode == 2
    assert "/nonexistent" in result.stderr
    assert "imagelabels.mat" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_unknown_method_lists_the_known_ones(results_dir: Path) -> None:
    result = run_cli("method=nosuch", results_dir=results_dir, timeout=60)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    for name in ("full", "fixed", "bitfit", "normtuning", "partial1", "mona"):
        assert f"\t{name}\n" in output
    assert "Traceback" not in output


def test_misspelt_key_fails_at_start_up_with_its_name(results_dir: Path) -> None:
    result = run_cli("trainer.epoch=3", results_dir=results_dir, timeout=60)
    assert result.returncode != 0
    assert "epoch" in result.stderr and "TrainerConfig" in result.stderr


def test_cfg_job_prints_the_resolved_config(results_dir: Path) -> None:
    result = run_cli("--cfg", "job", "method=fixed", results_dir=results_dir, timeout=60)
    assert result.returncode == 0
    assert "name: fixed" in result.stdout and "trainer:" in result.stdout


@pytest.mark.slow
def test_torchrun_two_cpu_processes_write_one_record(results_dir: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "peft_bench",
        f"paths.results_dir={results_dir}",
        *SMOKE,
        "method=full",
    ]
    result = subprocess.run(command, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    [record] = records(results_dir)
    assert record["status"] == "completed"
    assert record["device"].endswith("x2")
    assert set(record["metrics"]) == {"top1", "top5"}
