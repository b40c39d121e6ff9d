"""Exact repetition: with DataLoader workers, each training sample's augmentation keyed on (seed,
epoch, index), so that a resumed run ends bit for bit as the uninterrupted one; `trainer.deterministic`,
which a CUDA run needs for the same."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose
from omegaconf import DictConfig
from torch.utils.data import Dataset

from peft_bench.builder import build_data, build_task_model, check_choices
from peft_bench.config import DataConfig, TrainerConfig
from peft_bench.engine.checkpoint import trainable_state
from peft_bench.engine.distributed import DistInfo
from peft_bench.engine.trainer import Trainer
from peft_bench.plugins import config_session
from peft_bench.run import run, seed_everything

CPU = torch.device("cpu")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread, as the CLI tests' runs have (`trainer.threads=1`): on 2 shared cores, more
    threads and the workers contend. The count is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(*overrides: str) -> DictConfig:
    """BitFit on swin_nano and a few embedded scenes, two epochs of two steps, no val split."""
    with config_session():
        return compose(
            "config",
            [
                "method=bitfit",
                "backbone=swin_nano",
                "protocol=paper",  # no val split: the test split is the only evaluation
                "data.train_size=32",
                "data.test_size=8",
                "data.batch_size=16",
                "trainer.epochs=2",
                "trainer.progress=false",
                *overrides,
            ],
        )


# ---------------------------------------------------------------------------------------------
# Samples keyed on (seed, epoch, index)


class Draws(Dataset):
    """Eight samples, each its index and one draw from each global generator an augmentation may use."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([index, torch.rand(()).item(), random.random(), np.random.rand()])


def draws(workers: int, world_size: int, epoch: int) -> dict[int, list[float]]:
    """Each sample's draws in `epoch`, over the processes of a `world_size` run (batch 4)."""
    seen = {}
    for rank in range(world_size):
        info = DistInfo(rank=rank, world_size=world_size, device=CPU)
        trainer = Trainer(TrainerConfig(seed=3), DataConfig(batch_size=4, num_workers=workers), info, Path())
        loader = trainer._train_loader(Draws(), None)
        loader.sampler.set_epoch(epoch)
        seen.update({int(row[0]): row[1:].tolist() for batch in loader for row in batch})
    return seen


def test_with_workers_a_sample_draws_the_same_whatever_the_workers_and_processes() -> None:
    """With workers, a sample's augmentation is a function of (seed, epoch, index) alone: the same for 1
    or 2 workers and 1 or 2 processes, and another in the next epoch."""
    reference = draws(workers=1, world_size=1, epoch=0)
    assert sorted(reference) == list(range(8)) and len({tuple(v) for v in reference.values()}) == 8
    assert draws(workers=2, world_size=1, epoch=0) == reference
    assert draws(workers=2, world_size=2, epoch=0) == reference
    following = draws(workers=1, world_size=1, epoch=1)
    assert all(following[i][j] != reference[i][j] for i in range(8) for j in range(3))


def fit_with_workers(checkpoints: Path, max_steps: int | None) -> tuple[dict[str, torch.Tensor], list[float]]:
    """`tiny` with drop path (drawn in this process) and 2 persistent workers (which flip the scenes at
    random), trained in this process; its trainable tensors and losses. A `last.pt` in `checkpoints`
    resumes it."""
    cfg = tiny(
        "backbone.drop_path_rate=0.1",
        "data.num_workers=2",
        f"trainer.max_steps={'null' if max_steps is None else max_steps}",
    )
    seed_everything(cfg.trainer.seed)
    data = build_data(cfg)
    model = build_task_model(cfg, data.num_classes)
    task = check_choices(cfg)
    trainer = Trainer(cfg.trainer, cfg.data, DistInfo(rank=0, world_size=1, device=CPU), checkpoints)
    result = trainer.fit(model, data, task.build_evaluator(data, CPU), task.main_metric)
    return trainable_state(model), [row["loss"] for row in result.history]


@pytest.mark.usefixtures("one_thread")
def test_a_run_with_persistent_workers_resumes_to_the_same_bits(tmp_path: Path) -> None:
    """Stopped after its first epoch and resumed by a fresh trainer (with fresh workers), a run ends
    with the uninterrupted run's tensors and losses, bit for bit."""
    expected, expected_losses = fit_with_workers(tmp_path / "uninterrupted", max_steps=None)
    fit_with_workers(tmp_path / "interrupted", max_steps=2)  # the first of two epochs of 2 steps
    state, losses = fit_with_workers(tmp_path / "interrupted", max_steps=None)
    assert len(losses) == 4 and losses == expected_losses
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)


# ---------------------------------------------------------------------------------------------
# trainer.deterministic


@pytest.fixture
def switches_restored(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`trainer.deterministic` sets process-wide switches: they are as before after the test."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")  # records it as unset, so the test ends with it unset
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic
    yield
    torch.use_deterministic_algorithms(before[0])
    torch.backends.cudnn.deterministic = before[1]


@pytest.mark.usefixtures("one_thread", "switches_restored")
def test_a_deterministic_run_trains_with_deterministic_kernels_and_records_it(
    results_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deterministic kernels and cuBLAS's fixed workspace while it trains; the next run in the process,
    not deterministic, trains without them. The record says which, and the run id tells them apart."""
    seen = []
    fit = Trainer.fit

    def spy(self: Trainer, *args: object) -> object:
        kernels = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic
        seen.append((*kernels, os.environ.get("CUBLAS_WORKSPACE_CONFIG")))
        return fit(self, *args)

    monkeypatch.setattr(Trainer, "fit", spy)
    records = [
        run(tiny(f"trainer.deterministic={on}", "trainer.max_steps=1", f"paths.results_dir={results_dir}"))
        for on in ("true", "false")
    ]
    assert seen == [(True, True, ":4096:8"), (False, False, ":4096:8")]
    assert [r["deterministic"] for r in records] == [True, False]
    assert records[0]["run_id"] != records[1]["run_id"]


@pytest.fixture
def tf32_restored() -> Iterator[None]:
    before = torch.backends.cuda.matmul.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.usefixtures("one_thread", "tf32_restored")
def test_trainer_tf32_sets_tf32_matmuls_for_its_run_and_records_it(
    results_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = []
    fit = Trainer.fit

    def spy(self: Trainer, *args: object) -> object:
        seen.append(torch.backends.cuda.matmul.allow_tf32)
        return fit(self, *args)

    monkeypatch.setattr(Trainer, "fit", spy)
    records = [
        run(tiny(f"trainer.tf32={on}", "trainer.max_steps=1", f"paths.results_dir={results_dir}"))
        for on in ("true", "false")
    ]
    assert seen == [True, False] and [r["tf32"] for r in records] == [True, False]
    assert records[0]["run_id"] != records[1]["run_id"]
