"""Merged inference: inside `merged`, LoRA, DoRA and SSF compute what they compute unmerged, with the
plain modules' forward; afterwards every tensor is as it was, bit for bit, and training goes on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_methods import applied, images, micro

from peft_bench.config import DataConfig, TrainerConfig
from peft_bench.engine.distributed import DistInfo
from peft_bench.engine.trainer import Trainer
from peft_bench.methods import Mergeable, merged
from peft_bench.methods.lora import LoRAQKV

MERGEABLE = ("lora", "dora", "ssf")


def trained(name: str) -> torch.nn.Module:
    """A micro backbone with the method's tensors moved off their init (LoRA's B starts at zero)."""
    backbone = applied(micro(), name).eval()
    with torch.no_grad():
        for p in backbone.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return backbone


@pytest.mark.parametrize("name", MERGEABLE)
def test_merged_equals_unmerged_and_restores_every_tensor(name: str) -> None:
    backbone = trained(name)
    x = images()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with torch.no_grad():
        unmerged = backbone(x)
        with merged(backbone):
            modules = [m for m in backbone.modules() if isinstance(m, Mergeable)]
            assert modules and all(m.merged for m in modules)
            out = backbone(x)
    assert not torch.allclose(unmerged, micro().eval()(x), atol=1e-3)  # the update matters
    torch.testing.assert_close(out, unmerged, rtol=1e-5, atol=1e-5)
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(m.merged for m in modules)
    backbone.train()
    out = backbone(x)  # and it trains on:
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
    tuned = [p for p in backbone.parameters() if p.requires_grad]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tuned)


def test_merged_restores_after_an_error() -> None:
    backbone = trained("lora")
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises(RuntimeError, match="stop"), merged(backbone):
        raise RuntimeError("stop")
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())


class Recorder(torch.nn.Module):
    """A task model whose `predict` notes whether its LoRA projection is merged at that moment."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = LoRAQKV(torch.nn.Linear(4, 12), rank=2, alpha=1.0)
        self.seen: list[bool] = []

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        self.seen.append(self.qkv.merged)
        return self.qkv(images)


class Count:
    def reset(self) -> None:
        self.n = 0

    def update(self, predictions: torch.Tensor, targets: torch.Tensor) -> None:
        self.n += len(predictions)

    def compute(self) -> dict[str, float]:
        return {"n": float(self.n)}


def test_evaluation_runs_the_merged_model(tmp_path: Path) -> None:
    model = Recorder()
    cpu = DistInfo(rank=0, world_size=1, device=torch.device("cpu"))
    trainer = Trainer(TrainerConfig(), DataConfig(eval_batch_size=2), cpu, tmp_path)
    dataset = torch.utils.data.TensorDataset(torch.randn(5, 4), torch.zeros(5))
    assert trainer.evaluate(model, trainer._eval_loader(dataset, None), Count()) == {"n": 5.0}
    assert model.seen == [True, True, True] and not model.qkv.merged
