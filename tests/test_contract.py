"""The method contract, for every registered method on both families and on a pooled and a dense head:
it builds, exactly its own tensors train, it starts at the frozen base where it says so, a step
changes only what trains, and a mergeable method merges to the same function."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import pytest
import torch
from hydra import compose
from omegaconf import DictConfig
from torch import nn

from peft_bench.backbones import Backbone
from peft_bench.builder import build_task_model, head_of
from peft_bench.layers.merge import merged
from peft_bench.methods import METHODS, Mergeable
from peft_bench.plugins import config_session

BACKBONES = ("swin_micro", "vit_micro")
TASKS = {"shapes": "classification", "shapes_det": "detection"}
# Methods whose model is the base model at init, with the options that make it so.
AT_THE_BASE = {
    "full": [],
    "fixed": [],
    "bitfit": [],
    "normtuning": [],
    "partial1": [],
    "lora": [],
    "dora": [],
    "e3va": [],
    "adaptformer": ["method.init=original"],
    "ssf": ["method.init_std=0"],
}


def build(
    method: str, backbone: str, dataset: str, options: Sequence[str] = ()
) -> tuple[nn.Module, Backbone, DictConfig]:
    """The task model (in eval mode), a copy of its backbone as it was before the method, the config."""
    with config_session():
        cfg = compose(
            "config",
            [
                f"dataset={dataset}",
                f"method={method}",
                f"backbone={backbone}",
                "backbone.weights=none",
                *options,
            ],
        )
    bases: list[Backbone] = []
    torch.manual_seed(0)
    model = build_task_model(cfg, num_classes=3, on_base=lambda b: bases.append(copy.deepcopy(b)))
    return model.eval(), bases[0].eval(), cfg


def own_tensors(method: str, base: Backbone, tuned: Backbone) -> set[str]:
    """What the method says it trains, named in the tuned backbone."""
    names = dict(tuned.named_parameters())
    new = {n for n in names if n not in dict(base.named_parameters())}
    norms = {
        f"{m}.{p}"
        for m, module in base.named_modules()
        if isinstance(module, nn.LayerNorm)
        for p in ("weight", "bias")
    }
    last = tuned.transformer_blocks()[-1].name
    heads = {f"{norm}.{p}" for norm in tuned.head_norms() for p in ("weight", "bias")}
    return {
        "full": set(names),
        "fixed": set(),
        "bitfit": {n for n in names if "bias" in n},
        "normtuning": norms & set(names),
        "partial1": {n for n in names if n.startswith(last + ".")},
        "e3va": new | heads,
    }.get(method, new)


def inputs(dataset: str) -> tuple[object, object]:
    torch.manual_seed(1)
    if dataset == "shapes":
        return torch.randn(2, 3, 64, 64), torch.tensor([0, 2])
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    return images, [
        {"boxes": torch.tensor([[4.0, 4.0, 40.0, 36.0]]), "labels": torch.tensor([1])} for _ in images
    ]


def features(backbone: Backbone, dense: bool, images: object) -> list[torch.Tensor]:
    batch = torch.stack(images) if isinstance(images, list) else images
    return backbone.forward_pyramid(batch) if dense else [backbone(batch)]


@pytest.mark.parametrize("dataset", sorted(TASKS))
@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_the_method_contract(method: str, backbone: str, dataset: str) -> None:
    model, base, cfg = build(method, backbone, dataset)
    tuned = model.backbone
    dense = head_of(cfg).dense
    trainable = {n for n, p in tuned.named_parameters() if p.requires_grad}
    expected = own_tensors(method, base, tuned)
    if dense:  # the output norm a head reads no level from stays frozen (RetinaNet's stage 0)
        read = {tuned.level_maps[level] for level in head_of(cfg).stages}
        expected -= {
            n for n in expected if n.startswith("output_norms.") and int(n.split(".")[1]) not in read
        }
    assert trainable == expected

    images, targets = inputs(dataset)
    if method in AT_THE_BASE:
        options = AT_THE_BASE[method]
        at_init, at_base = build(method, backbone, dataset, options)[:2] if options else (model, base)
        with torch.no_grad():
            pairs = zip(
                features(at_init.backbone, dense, images), features(at_base, dense, images), strict=True
            )
            for ours, theirs in pairs:
                torch.testing.assert_close(ours, theirs)

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    model(images, targets).backward()
    optimizer.step()
    after = dict(model.named_parameters())
    assert all(torch.equal(p, before[n]) for n, p in after.items() if not p.requires_grad)
    assert any(not torch.equal(p, before[n]) for n, p in after.items() if p.requires_grad)

    if any(isinstance(m, Mergeable) for m in tuned.modules()):
        model.eval()
        with torch.no_grad():
            plain = features(tuned, dense, images)
            with merged(model):
                folded = features(tuned, dense, images)
            after = features(tuned, dense, images)
        for a, b, c in zip(plain, folded, after, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
            assert torch.equal(a, c)  # restored bit for bit
