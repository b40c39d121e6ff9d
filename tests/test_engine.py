"""Units of the engine and the store: schedule, parameter groups, atomic writes, sharding,
checkpoint contents, protocol identity, the no-grad prefix."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import SMOKE, records, run_cli
from omegaconf import OmegaConf
from torch import nn

from peft_bench.backbones.swin import build_swin
from peft_bench.config import Config, LinearHeadConfig, MethodConfig
from peft_bench.engine.checkpoint import trainable_state
from peft_bench.engine.distributed import ShardSampler
from peft_bench.engine.optim import parameter_groups
from peft_bench.engine.schedules import warmup_cosine
from peft_bench.engine.trainer import compile_in_place
from peft_bench.errors import UserError
from peft_bench.methods import METHODS, build_method
from peft_bench.methods.mona import MonaConfig
from peft_bench.models.classifier import ClassificationModel
from peft_bench.results.atomic import write_atomic, write_json_atomic
from peft_bench.results.protocol import protocol_hash, run_id_for
from peft_bench.results.store import load_runs


def test_warmup_cosine_matches_the_closed_form() -> None:
    total, warmup, floor = 100, 10, 0.01
    factor = warmup_cosine(total, warmup, floor)
    assert factor(0) == pytest.approx(0.1)
    assert factor(9) == pytest.approx(1.0)
    for step in (10, 40, 77, 100):
        progress = (step - warmup) / (total - warmup)
        assert factor(step) == pytest.approx(floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
    assert factor(100) == pytest.approx(floor)


def test_no_weight_decay_on_norms_biases_and_position_tables() -> None:
    backbone = build_swin("swin_micro")
    groups = parameter_groups(backbone, lr=1e-3, weight_decay=0.05)
    names = {id(p): n for n, p in backbone.named_parameters()}
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    decay = {names[id(p)] for g in groups if g["weight_decay"] == 0.05 for p in g["params"]}
    assert "layers.0.blocks.0.attn.relative_position_bias_table" in no_decay
    assert "layers.0.blocks.0.norm1.weight" in no_decay and "layers.0.blocks.0.mlp.fc1.bias" in no_decay
    assert "layers.0.blocks.0.attn.qkv.weight" in decay
    assert len(no_decay) + len(decay) == len(names)


def test_head_lr_multiplier_leaves_the_backbone_and_its_method_at_the_base_lr() -> None:
    backbone = build_swin("swin_micro")
    METHODS["mona"](MonaConfig(name="mona")).apply(backbone)
    model = ClassificationModel(backbone, num_classes=5)
    groups = parameter_groups(model, lr=1e-3, weight_decay=0.05, head_lr_mult=10.0)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert len(lr_of) == sum(len(g["params"]) for g in groups) == len(trainable)  # each tensor once
    for name, p in trainable.items():
        in_backbone = name.startswith("backbone.")
        assert lr_of[id(p)] == pytest.approx(1e-3 if in_backbone else 1e-2), name
    assert any(".slots." in n for n in trainable) and "head.weight" in trainable


def test_atomic_write_leaves_the_old_file_when_interrupted(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    write_json_atomic(target, {"status": "running"})

    def broken(f) -> None:
        f.write(b'{"status": "compl')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, broken)
    assert json.loads(target.read_text()) == {"status": "running"}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_shards_cover_every_index_once() -> None:
    shards = [list(ShardSampler(11, rank, 3)) for rank in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(11))


def test_checkpoint_state_holds_trainable_tensors_and_buffers_only() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    state = trainable_state(model)
    assert "0.weight" not in state and "0.bias" not in state
    assert {"1.weight", "1.running_mean", "1.num_batches_tracked", "2.weight"} <= set(state)


def test_protocol_ignores_seed_and_paths_but_not_hyperparameters() -> None:
    def cfg(**trainer) -> OmegaConf:
        base = OmegaConf.structured(Config)
        base.method = OmegaConf.structured(MethodConfig(name="fixed"))
        base.head = OmegaConf.structured(LinearHeadConfig(name="linear"))
        base.data.name = "shapes"
        return OmegaConf.merge(base, {"trainer": trainer})

    assert protocol_hash(cfg(seed=1)) == protocol_hash(cfg(seed=2))
    assert protocol_hash(cfg(lr=0.1)) != protocol_hash(cfg(lr=0.2))
    moved = OmegaConf.merge(cfg(), {"paths": {"results_dir": "/elsewhere"}})
    assert protocol_hash(moved) == protocol_hash(cfg())
    assert run_id_for(cfg(seed=3)).startswith("shapes-fixed-swin_micro-s3-")


def test_load_runs_flattens_records(tmp_path: Path) -> None:
    for i, status in enumerate(["completed", "failed"]):
        write_json_atomic(
            tmp_path / "runs" / f"r{i}" / "metrics.json",
            {"run_id": f"r{i}", "status": status, "method": "mona", "metrics": {"top1": 50.0 + i}},
        )
    frame = load_runs(tmp_path)
    assert list(frame["run_id"]) == ["r0", "r1"]
    assert list(frame["metrics.top1"]) == [50.0, 51.0]


@pytest.mark.parametrize(
    ("method", "grad_stages"), [("fixed", []), ("partial1", [3]), ("full", [0, 1, 2, 3])]
)
def test_no_autograd_graph_below_the_first_trainable_tensor(method: str, grad_stages: list[int]) -> None:
    backbone = build_swin("swin_micro")
    build_method(MethodConfig(name=method)).apply(backbone)
    last_stage_first_block = []
    backbone.layers[3].blocks[0].register_forward_hook(lambda m, i, out: last_stage_first_block.append(out))
    stages = backbone.forward_stages(torch.randn(1, 3, 64, 64))
    assert [i for i, s in enumerate(stages) if s.requires_grad] == grad_stages
    # Partial-1 trains layers.3.blocks.1 only: the block before it runs without a graph.
    assert last_stage_first_block[0].requires_grad == (method == "full")


@pytest.mark.slow
def test_compiled_training_follows_the_eager_loss_curve(tmp_path: Path) -> None:
    """`trainer.compile=true` trains the same model: the same losses step by step, the same run id.

    The aot_eager backend captures the whole training graph and its autograd as inductor would, without
    generating kernels (minutes of C++ compilation on this CPU)."""
    overrides = [*SMOKE, "method=mona", "trainer.max_steps=4", "trainer.epochs=1"]
    compiled = [*overrides, "trainer.compile=true", "trainer.compile_backend=aot_eager"]
    runs = {}
    for name, args in (("eager", overrides), ("compiled", compiled)):
        result = run_cli(*args, results_dir=tmp_path / name)
        assert result.returncode == 0, result.stderr
        [record] = records(tmp_path / name)
        with open(tmp_path / name / "runs" / record["run_id"] / "history.csv") as f:
            runs[name] = (record["run_id"], [float(row["loss"]) for row in csv.DictReader(f)])
    (eager_id, eager_losses), (compiled_id, compiled_losses) = runs["eager"], runs["compiled"]
    assert compiled_id == eager_id and len(eager_losses) == 4
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)


def test_an_unknown_compile_backend_is_refused_with_the_known_ones() -> None:
    with pytest.raises(UserError, match=r"trainer.compile_backend='inductr'.*inductor"):
        compile_in_place(nn.Linear(2, 2), "inductr")
