"""A backbone family from outside the package: the example plugin `examples/peft_bench_pit` (timm's
PiT, whose class token crosses its pooling transitions). In process: it is timm's PiT bit for bit,
its pyramid has strides 4-32, and methods of the registry (LoRA, Mona, VPT, E3VA) train exactly
their own tensors on it. End to end: installed with pip, it runs and is counted from another directory.
"""

from __future__ import annotations

import copy
import importlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import timm
import torch
from conftest import REPO, records
from hydra import compose
from test_plugin import pip_install, python
from torch import nn

from peft_bench.backbones import Backbone, build_backbone, weights
from peft_bench.builder import build_tuned_backbone, head_of
from peft_bench.config import BackboneConfig
from peft_bench.errors import UserError
from peft_bench.layers.slots import TokenLayout, slots_of
from peft_bench.methods.lora import LoRAConfig
from peft_bench.methods.mona import MultiCognitiveFilter
from peft_bench.plugins import config_session

PLUGIN = REPO / "examples" / "peft_bench_pit"
sys.path.insert(0, str(PLUGIN))
pit = importlib.import_module("peft_bench_pit")  # registers pit_micro and pit_ti (again: harmless)
sys.path.remove(str(PLUGIN))

LORA_RANK = LoRAConfig().rank  # 64


def pit_micro(**options: object) -> Backbone:
    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig(name="pit_micro", weights="none"), **options)
    with torch.no_grad():  # every tensor away from its init, so that a misplaced one shows
        for p in backbone.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return backbone.eval()


def timm_twin(backbone: Backbone) -> nn.Module:
    """timm's own PiT of pit_micro's architecture with the backbone's tensors (strictly: same names)."""
    body = timm.create_model("pit_ti_224", num_classes=0, **pit.MICRO)
    body.load_state_dict(backbone.state_dict())
    return body.eval()


@pytest.mark.parametrize("slotted", [False, True])
def test_the_empty_slot_pit_is_timms_pit_bit_for_bit(slotted: bool) -> None:
    """timm norms only the class token at the end; the contract norms every token of the last stage
    and pools the class token: the same numbers (LayerNorm is per token), and so bit for bit. With
    empty slots every block takes the slotted path, which computes timm's `Block.forward`."""
    backbone = pit_micro()
    twin = timm_twin(backbone)
    if slotted:
        for block in backbone.transformer_blocks():
            slots_of(block.module)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = backbone.forward_features(x)
        assert features.shape == (2, 1 + 2 * 2, 128)
        assert torch.equal(features[:, :1], twin.forward_features(x))
        assert torch.equal(backbone(x), twin(x))
        _, maps = twin.forward_intermediates(x)
        stages = backbone.forward_stages(x)
        for stage, timm_map in zip(stages, maps, strict=True):  # every stage's grid, pooled as timm pools
            layout = TokenLayout(tuple(timm_map.shape[-2:]), 1)
            assert torch.equal(backbone.to_map(stage, layout), timm_map)


def test_the_pyramid_has_three_stage_maps_and_four_levels_at_strides_4_to_32() -> None:
    backbone = pit_micro()
    backbone.use_output_norms()
    with torch.no_grad():
        maps = backbone.forward_pyramid(torch.randn(2, 3, 64, 64))
        assert [tuple(m.shape) for m in maps] == [(2, 32, 8, 8), (2, 64, 4, 4), (2, 128, 2, 2)]
        pyramid = backbone.pyramid((0, 1, 2, 3))
        levels = pyramid(maps)
    assert [tuple(level.shape[1:]) for level in levels] == [
        (width, 64 // stride, 64 // stride)
        for width, stride in zip((32, 32, 64, 128), (4, 8, 16, 32), strict=True)
    ]
    assert pyramid.channels == (32, 32, 64, 128) and backbone.pyramid((1, 2, 3)).up is None


def test_a_dense_pit_pads_to_whole_patches_and_resamples_its_position_map() -> None:
    backbone = pit_micro(dynamic_size=True)
    backbone.use_output_norms()
    with torch.no_grad():
        maps = backbone.forward_pyramid(torch.randn(1, 3, 70, 90))  # padded to 72 x 96: a 9 x 12 grid
    assert [tuple(m.shape[-2:]) for m in maps] == [(9, 12), (5, 6), (3, 3)]
    with pytest.raises(UserError, match="partial patch"):
        pit_micro()(torch.randn(1, 3, 60, 64))


def test_bad_options_are_user_errors_and_a_timm_state_dict_loads(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"backbone.window_size=7 is a Swin option"):
        build_backbone(BackboneConfig(name="pit_micro", weights="none", window_size=7))
    for value, message in (("mini", "not pit_micro"), ("in1k", "no hub weights named 'in1k'")):
        with pytest.raises(UserError, match=message):
            build_backbone(BackboneConfig(name="pit_micro", weights=value))
    saved = pit_micro()
    torch.save(saved.state_dict(), tmp_path / "pit.pth")
    loaded = build_backbone(BackboneConfig(name="pit_micro", weights=str(tmp_path / "pit.pth"))).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), saved(x))
    torch.save(
        build_backbone(BackboneConfig(name="vit_micro", weights="none")).state_dict(), tmp_path / "v.pth"
    )
    with pytest.raises(UserError, match="does not fit pit_micro: missing keys"):
        build_backbone(BackboneConfig(name="pit_micro", weights=str(tmp_path / "v.pth")))


def test_pit_ti_loads_timms_hub_weights_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`backbone=pit_ti` (weights `in1k`): timm's `pit_ti_224.in1k`, head dropped, from the HF cache
    (here a file of timm's classifier standing in for the cached download)."""
    torch.manual_seed(0)
    classifier = timm.create_model("pit_ti_224").eval()
    torch.save(classifier.state_dict(), tmp_path / "pytorch_model.bin")
    monkeypatch.setattr(weights, "cached_hub_file", lambda model: tmp_path / "pytorch_model.bin")
    backbone = build_backbone(BackboneConfig(name="pit_ti", weights="in1k")).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(
            backbone(x), classifier.forward_head(classifier.forward_features(x), pre_logits=True)
        )


def tuned(method: str, dataset: str) -> tuple[Backbone, Backbone, bool]:
    """pit_micro with `method` applied as a run applies it, a copy of it before, and whether it is dense."""
    with config_session():
        cfg = compose("config", [f"dataset={dataset}", "backbone=pit_micro", f"method={method}"])
    bases: list[Backbone] = []
    torch.manual_seed(0)
    backbone = build_tuned_backbone(cfg, on_base=lambda b: bases.append(copy.deepcopy(b)))
    return backbone, bases[0], head_of(cfg).dense


@pytest.mark.parametrize("dataset", ["shapes", "shapes_det"])
@pytest.mark.parametrize("method", ["lora", "mona", "vpt", "e3va"])
def test_a_method_trains_exactly_its_own_tensors_on_pit(method: str, dataset: str) -> None:
    backbone, base, dense = tuned(method, dataset)
    new = {n for n, _ in backbone.named_parameters()} - {n for n, _ in base.named_parameters()}
    heads = {f"{norm}.{p}" for norm in backbone.head_norms() for p in ("weight", "bias")}
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable == (new | heads if method == "e3va" else new) and new

    grids = []  # what Mona's 2-D filter is told of the tokens, block after block
    for module in backbone.modules():
        if isinstance(module, MultiCognitiveFilter):
            module.register_forward_pre_hook(lambda _, args: grids.append(args[1]))
    before = {n: p.detach().clone() for n, p in backbone.named_parameters()}
    images = torch.randn(2, 3, 64, 64)
    backbone.train()
    features = backbone.forward_pyramid(images) if dense else [backbone(images)]
    sum(f.square().mean() for f in features).backward()
    torch.optim.SGD([p for p in backbone.parameters() if p.requires_grad], lr=0.1).step()
    after = dict(backbone.named_parameters())
    assert all(torch.equal(p, before[n]) for n, p in after.items() if n not in trainable)
    assert any(not torch.equal(after[n], before[n]) for n in trainable)
    if method == "mona":  # two filters per block, on a grid that halves at each pooling, class token first
        expected = [((8, 8), 1)] * 4 + [((4, 4), 1)] * 4 + [((2, 2), 1)] * 4
        assert [(layout.grid, layout.prefix) for layout in grids] == expected


def test_e3vas_highway_crosses_the_poolings_into_the_pooled_feature() -> None:
    """A classifier reads the last stage only: stage 0's adapters reach it through the lead that
    `Highway` carries through `enter_stage` (PiT's poolings, class token included)."""
    backbone, base, _ = tuned("e3va", "shapes")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(backbone.eval()(x), base.eval()(x))  # zero up projections: the base
        for p in backbone.side.parameters():
            p.add_(0.05 * torch.randn_like(p))
    backbone(x).square().sum().backward()
    first = backbone.side.stages[0][0]
    assert first.attn.up.weight.grad.abs().sum() > 0 and first.mlp.down.weight.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in backbone.named_parameters() if n.startswith("transformers."))


@pytest.fixture(scope="module")
def pit_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site, source = tmp_path_factory.mktemp("site"), tmp_path_factory.mktemp("source") / "plugin"
    shutil.copytree(
        PLUGIN, source, ignore=shutil.ignore_patterns("__pycache__")
    )  # setuptools builds in place
    pip_install(site, str(source))
    return site


@pytest.mark.slow
def test_the_installed_pit_plugin_runs_and_counts_from_another_directory(
    pit_site: Path, tmp_path: Path
) -> None:
    results = tmp_path / "results"
    cell = ["dataset=shapes", "data.train_size=32", "data.val_size=8", "data.test_size=8"]
    trainer = ["trainer.max_steps=1", "trainer.threads=1", "trainer.progress=false"]
    run = ["-m", "peft_bench", "backbone=pit_micro", "method=lora", *cell, *trainer]
    ran = python(pit_site, tmp_path, *run, f"paths.results_dir={results}")
    assert ran.returncode == 0, ran.stderr
    [record] = records(results)
    assert record["status"] == "completed" and record["backbone"] == "pit_micro"

    counted = python(pit_site, tmp_path, "-m", "peft_bench.params", "backbone=pit_micro", "method=lora")
    assert counted.returncode == 0, counted.stderr
    widths = [block.dim for block in pit_micro().transformer_blocks()]  # 32, 32, 64, 64, 128, 128
    assert json.loads(counted.stdout.splitlines()[-1])["backbone_trainable"] == 4 * LORA_RANK * sum(widths)
