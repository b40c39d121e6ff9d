"""The bench (`peft_bench.bench`), checked on the CPU: where the optimiser's state goes when a
candidate moves, that a step's forward never sees the last step's gradients, how many steps a
sample times, and the CSV end to end, with its FLOPs. No timing is asserted."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

from peft_bench import bench
from peft_bench.config import Precision
from peft_bench.engine.optim import build_optimizer
from peft_bench.engine.precision import autocast

CPU = torch.device("cpu")
META = torch.device("meta")  # stands for a GPU: a device other than the CPU, with no data to move
SMALL = ["--backbone", "swin_micro", "--img-size", "64", "--batch", "2", "--methods", "full,lora"]


def _stepped_optimizer(fused: bool) -> torch.optim.Optimizer:
    model = nn.Linear(4, 3)
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.05, fused=fused)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()  # creates the state
    return optimizer


def _state_devices(optimizer: torch.optim.Optimizer) -> dict[str, set[str]]:
    devices: dict[str, set[str]] = {}
    for state in optimizer.state.values():
        for key, value in state.items():
            devices.setdefault(key, set()).add(value.device.type)
    return devices


@pytest.mark.parametrize("fused", [False, True])
def test_the_optimiser_state_moves_where_adamw_keeps_it(fused: bool) -> None:
    optimizer = _stepped_optimizer(fused)
    bench.move_optimizer_state(optimizer, META)
    step_device = "meta" if fused else "cpu"  # non-fused AdamW keeps `step` on the host: no sync per read
    assert _state_devices(optimizer) == {"step": {step_device}, "exp_avg": {"meta"}, "exp_avg_sq": {"meta"}}


def test_a_step_frees_its_gradients_before_the_next_forward() -> None:
    [c] = bench.build_candidates(["full"], "swin_micro", 64, fused=False)
    images, targets = torch.randn(2, 3, 64, 64), torch.tensor([0, 1])
    grads_at_forward: list[bool] = []
    grads_at_update: list[bool] = []

    def any_grad() -> bool:
        return any(p.grad is not None for p in c.model.parameters())

    c.model.register_forward_pre_hook(lambda *_: grads_at_forward.append(any_grad()))
    c.optimizer.register_step_pre_hook(lambda *_: grads_at_update.append(any_grad()))
    for _ in range(3):
        bench._train_step(c, images, targets, autocast(CPU, Precision.fp32))
    assert grads_at_forward == [False] * 3
    assert grads_at_update == [True] * 3  # the backward did produce them


def _count_steps(monkeypatch: pytest.MonkeyPatch) -> tuple[Counter, Counter]:
    """Calls of the training step and of inference, by method."""
    trained, inferred = Counter(), Counter()
    train_step, infer = bench._train_step, bench._infer

    def counted_train_step(c, *args) -> None:
        trained[c.method] += 1
        train_step(c, *args)

    def counted_infer(c, *args) -> None:
        inferred[c.method] += 1
        infer(c, *args)

    monkeypatch.setattr(bench, "_train_step", counted_train_step)
    monkeypatch.setattr(bench, "_infer", counted_infer)
    return trained, inferred


def test_the_cpu_bench_times_one_step_per_sample_and_writes_its_csv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained, inferred = _count_steps(monkeypatch)
    out = tmp_path / "bench.csv"
    rows = bench.main([*SMALL, "--repeats", "2", "--warmup", "1", "--out", str(out)])
    assert trained == inferred == Counter(full=1 + 2, lora=1 + 2)  # warm-up, then a step per sample
    written = list(csv.DictReader(out.open()))
    assert [r["method"] for r in written] == [r["method"] for r in rows] == ["full", "lora"]
    assert {(r["device"], r["mem_source"]) for r in written} == {("cpu", "step_account")}
    assert all(float(r["step_ms"]) > 0 and float(r["peak_mem_mb"]) > 0 for r in written)
    assert float(written[0]["step_vs_full"]) == 1.0
    # FLOPs, counted once per method outside the timed steps (no step or inference more above)
    full, lora = written
    assert float(full["flops_vs_full"]) == 1.0 and float(full["step_vs_flops"]) == 1.0
    assert float(full["step_gflop"]) == pytest.approx(
        float(full["forward_gflop"]) + float(full["backward_gflop"])
    )
    assert float(lora["infer_gflop"]) == float(full["infer_gflop"])  # merged, as timed
    assert 0 < float(lora["step_gflop"]) < float(full["step_gflop"])  # no weight gradients of frozen weights
    assert float(lora["step_gb"]) > 0 and float(lora["bytes_vs_full"]) > 0


def test_steps_times_that_many_steps_per_placement_after_its_warm_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained, inferred = _count_steps(monkeypatch)
    monkeypatch.setattr(bench, "default_placement_warmup", lambda device: 1)  # as on CUDA
    argv = [*SMALL, "--repeats", "2", "--warmup", "0", "--steps", "3", "--out", str(tmp_path / "bench.csv")]
    bench.main(argv)
    assert trained == inferred == Counter(full=2 * (1 + 3), lora=2 * (1 + 3))


def test_steps_must_be_positive() -> None:
    with pytest.raises(SystemExit):
        bench.main([*SMALL, "--steps", "0"])
