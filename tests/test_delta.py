"""Delta checkpoints: only the tuned tensors are saved, they restore the exact model on a fresh
copy of the base backbone, and another backbone is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from peft_bench.backbones.swin import build_swin
from peft_bench.delta import backbone_fingerprint, load_delta, read_delta_metadata, save_delta
from peft_bench.errors import UserError
from peft_bench.methods import METHODS
from peft_bench.models.classifier import ClassificationModel


def tuned_model(method: str, base_seed: int) -> tuple[ClassificationModel, str]:
    """A classifier on a swin_micro whose base weights come from `base_seed`, with `method` applied."""
    torch.manual_seed(base_seed)
    backbone = build_swin("swin_micro")
    fingerprint = backbone_fingerprint(backbone)
    METHODS[method](METHODS[method].config_class(name=method)).apply(backbone)
    torch.manual_seed(1000)  # the head and inserted modules get the same init in every copy
    return ClassificationModel(backbone, num_classes=5), fingerprint


@pytest.mark.parametrize("method", ["mona", "lora", "lorand", "bitfit", "partial1"])
def test_delta_round_trip_restores_outputs(method: str, tmp_path: Path) -> None:
    model, fingerprint = tuned_model(method, base_seed=0)
    with torch.no_grad():  # stand-in for training: move every trainable tensor
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    path = tmp_path / "model.safetensors"
    save_delta(path, model, fingerprint, {"method": method})

    saved = load_file(str(path))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert trainable <= set(saved) and not frozen & set(saved)
    assert read_delta_metadata(path)["base_fingerprint"] == fingerprint

    fresh, fresh_fingerprint = tuned_model(method, base_seed=0)
    assert fresh_fingerprint == fingerprint
    load_delta(path, fresh, fresh_fingerprint)
    x = torch.randn(2, 3, 64, 64)
    model.eval(), fresh.eval()
    torch.testing.assert_close(fresh.predict(x), model.predict(x), rtol=0, atol=0)


def test_delta_on_another_backbone_is_refused(tmp_path: Path) -> None:
    model, fingerprint = tuned_model("mona", base_seed=0)
    path = tmp_path / "model.safetensors"
    save_delta(path, model, fingerprint, {})
    other, other_fingerprint = tuned_model("mona", base_seed=1)
    assert other_fingerprint != fingerprint
    with pytest.raises(UserError, match="base weights differ"):
        load_delta(path, other, other_fingerprint)
