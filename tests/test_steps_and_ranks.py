"""The trainer's step accounting and its multi-process decisions, checked on the CPU: fp16 steps the
loss scale skips (counted, not fatal), a collapsed scale (fatal), no stale gradients in a forward, a
run folder that one process cannot see, and how a process finds its rank under torchrun or srun."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import TensorDataset

from peft_bench.config import DataConfig, TrainerConfig
from peft_bench.data.base import TaskData
from peft_bench.engine import trainer as trainer_module
from peft_bench.engine.distributed import (
    DistInfo,
    Launch,
    check_shared_directory,
    launch_from_environment,
    slurm_root_node,
)
from peft_bench.engine.trainer import Trainer, data_workers
from peft_bench.errors import TrainingDiverged, UserError

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


class Regression(nn.Module):
    """A linear model whose training loss is made non-finite at chosen steps (1-based), as an fp16
    forward that overflowed; it records whether any gradient was alive at each forward."""

    def __init__(self, poisoned: set[int] | None = None) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.poisoned = poisoned or set()
        self.steps = 0
        self.stale_gradients: list[bool] = []

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self.steps += 1
        self.stale_gradients.append(any(p.grad is not None for p in self.parameters()))
        loss = (self.linear(images).squeeze(1) - targets).pow(2).mean()
        return loss * math.inf if self.steps in self.poisoned else loss

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(images)


class Nothing:
    def reset(self) -> None: ...

    def update(self, predictions: torch.Tensor, targets: torch.Tensor) -> None: ...

    def compute(self) -> dict[str, float]:
        return {}


def fit(model: Regression, steps: int, tmp_path: Path, init_scale: float | None = None) -> Trainer:
    """`steps` steps of batch 2, one history row each; with `init_scale`, under a dynamic loss scale
    (the CPU's GradScaler: the trainer's fp16 bookkeeping without fp16)."""
    torch.manual_seed(0)
    data = TaskData(TensorDataset(torch.randn(16, 4), torch.randn(16)), None, None, 1, ["y"], "none")
    cfg = TrainerConfig(max_steps=steps, epochs=1, lr=0.1, clip_grad_norm=None, progress=False)
    trainer = Trainer(cfg, DataConfig(batch_size=2), DistInfo(0, 1, CPU), tmp_path / str(steps))
    with pytest.MonkeyPatch.context() as patch:
        if init_scale is not None:
            scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
            patch.setattr(trainer_module, "grad_scaler", lambda device, precision: scaler)
        trainer.fit(model, data, Nothing(), "none")
    return trainer


def weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_a_skipped_fp16_step_is_counted_leaves_the_weights_and_halves_the_scale(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = Regression(poisoned={1})
    before = weights(model)
    one = fit(model, 1, tmp_path, init_scale=2.0**16)
    assert all(torch.equal(a, b) for a, b in zip(before, weights(model), strict=True))
    [row] = one.state.history
    assert row["skipped_steps"] == 1 and row["loss_scale"] == 2.0**15 and math.isnan(row["loss"])

    torch.manual_seed(1)
    model = Regression(poisoned={1})
    two = fit(model, 2, tmp_path, init_scale=2.0**16)
    assert not all(torch.equal(a, b) for a, b in zip(before, weights(model), strict=True))
    assert [row["skipped_steps"] for row in two.state.history] == [1, 1]
    assert [row["loss_scale"] for row in two.state.history] == [2.0**15, 2.0**15]  # step 2 taken
    assert math.isfinite(two.state.history[1]["loss"]) and two.state.skipped_steps == 1


def test_a_collapsed_loss_scale_ends_the_run(tmp_path: Path) -> None:
    model = Regression(poisoned=set(range(1, 100)))
    with pytest.raises(TrainingDiverged, match=r"loss scale fell to 6\.1\d*e-05 by step 4"):
        fit(model, 8, tmp_path, init_scale=2.0**-10)


def test_a_non_finite_loss_without_a_loss_scale_ends_the_run(tmp_path: Path) -> None:
    with pytest.raises(TrainingDiverged, match="training loss became inf or NaN by step 2"):
        fit(Regression(poisoned={2}), 4, tmp_path)


def test_no_forward_runs_with_last_steps_gradients_alive(tmp_path: Path) -> None:
    model = Regression()
    fit(model, 3, tmp_path)
    assert model.stale_gradients == [False, False, False]


def test_no_step_with_a_val_split_scores_the_untrained_model(tmp_path: Path) -> None:
    """`trainer.max_steps=0` (an untrained baseline): nothing was selected on val, so the reported
    model is the untrained one, not a best checkpoint that was never written."""
    split = TensorDataset(torch.randn(4, 4), torch.randn(4))
    data = TaskData(split, split, split, 1, ["y"], "val")
    cfg = TrainerConfig(max_steps=0, epochs=1, progress=False)
    trainer = Trainer(cfg, DataConfig(batch_size=2), DistInfo(0, 1, CPU), tmp_path)
    model = Regression()
    result = trainer.fit(model, data, Nothing(), "none")
    assert result.steps == 0 and model.steps == 0 and result.selected_metrics == result.last_metrics


# ---------------------------------------------------------------------------------------------
# Several processes


def sees_its_folders(rank: int, init: str, root: str) -> None:
    """Rank 0 and 1 check one shared folder, then a folder of their own (one that rank 1 cannot see)."""
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    outcomes = []
    for folder in (Path(root, "run"), Path(root, f"run-{rank}")):
        try:
            check_shared_directory(folder)
            outcomes.append("ok")
        except UserError as error:
            outcomes.append(str(error).replace(str(folder), "<folder>"))
    Path(root, f"{rank}.txt").write_text("\n".join(outcomes))
    dist.destroy_process_group()


def test_a_run_folder_that_one_process_cannot_see_is_refused(tmp_path: Path) -> None:
    mp.spawn(sees_its_folders, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    [shared, rank_1, *_], [shared_1, rank_1_1, *_] = (
        (tmp_path / f"{rank}.txt").read_text().split("\n") for rank in range(2)
    )
    assert shared == shared_1 == "ok" and not list((tmp_path / "run").iterdir())  # no marker left
    assert rank_1 == rank_1_1 and "<folder> is not visible to rank 1 (" in rank_1  # refused everywhere
    assert "rank 0 (" not in rank_1 and "same path" in rank_1


def test_the_launch_is_read_from_torchrun_then_a_slurm_step() -> None:
    torchrun = {"WORLD_SIZE": "8", "RANK": "5", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}
    assert launch_from_environment(torchrun) == Launch(5, 8, 1, 4)
    assert launch_from_environment({}) == Launch()
    job = {
        "SLURM_NTASKS": "8",
        "SLURM_PROCID": "0",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
        "SLURM_JOB_ID": "123456",
    }
    assert launch_from_environment(dict(job)) == Launch()  # the batch script itself: no step, one run
    step = {
        **job,
        "SLURM_STEP_NUM_TASKS": "8",
        "SLURM_PROCID": "6",
        "SLURM_LOCALID": "2",
        "SLURM_STEP_TASKS_PER_NODE": "4(x2)",
        "SLURM_STEP_NODELIST": "gpu[07-08]",
    }
    assert launch_from_environment(step) == Launch(6, 8, 2, 4)
    assert step["MASTER_ADDR"] == "gpu07" and step["MASTER_PORT"] == str(15000 + 3456)
    assert launch_from_environment({**step, "SLURM_STEP_NUM_TASKS": "1"}) == Launch()  # srun --pty bash


@pytest.mark.parametrize(
    ("nodelist", "root"),
    [("node1", "node1"), ("a,b", "a"), ("gpu[03-05,09],cpu1", "gpu03"), ("x[1,4]", "x1"), ("n[007]", "n007")],
)
def test_the_main_address_is_the_first_host_of_the_slurm_node_list(nodelist: str, root: str) -> None:
    assert slurm_root_node(nodelist) == root


def test_data_workers_come_from_the_cpus_this_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    assert data_workers(3, CUDA, 1) == 3 and data_workers(3, CPU, 1) == 3  # an explicit value stands
    assert data_workers(None, CPU, 1) == 0
    assert data_workers(None, CUDA, 1) == 8 and data_workers(None, CUDA, 8) == 3  # 32 CPUs, 8 processes
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")  # a task's own CPUs: not shared further
    assert data_workers(None, CUDA, 8) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert data_workers(None, CUDA, 1) == 0
