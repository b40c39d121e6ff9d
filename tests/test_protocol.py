"""The paper presets run the reference protocol: every setting `docs/protocol.md` documents is the
composed config's for every cell of every paper preset; each schedule follows its mmcv policy (and
the reference's own training logs); weight decay and inits follow the reference configs; a run of
the paper's protocol reports its last checkpoint."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, SMOKE, records, run_cli
from hydra import compose
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from peft_bench import shipped
from peft_bench.backbones import BACKBONES
from peft_bench.backbones.swin import build_swin
from peft_bench.config import HeadInit, MethodInit, NoDecay
from peft_bench.engine.optim import parameter_groups
from peft_bench.engine.schedules import lr_factor
from peft_bench.methods import METHODS
from peft_bench.methods.adapter import AdapterConfig
from peft_bench.methods.adaptformer import AdaptFormerConfig
from peft_bench.methods.mona import MonaConfig
from peft_bench.models.classifier import ClassificationModel
from peft_bench.plugins import config_session
from peft_bench.report.grid import Cell
from peft_bench.report.profiles import profile
from peft_bench.results.protocol import protocol_hash, protocol_of

DOC = REPO / "docs" / "protocol.md"
PIN = re.compile(r"`([a-z_]+(?:\.[a-z_]+)+) = ([^`]+)`(?: \[(\w+)\])?")
PAPER_TARGETS = ("1", "2", "3", "4", "5", "fig5")


# ---------------------------------------------------------------------------------------------
# docs/protocol.md against the composed presets


@dataclass
class Section:
    title: str
    targets: tuple[str, ...]  # empty: every paper target
    datasets: tuple[str, ...]  # empty: every dataset
    pins: list[tuple[str, object, str | None]] = field(default_factory=list)  # key, value, method

    def covers(self, target: str, dataset: str) -> bool:
        return (not self.targets or target in self.targets) and (
            not self.datasets or dataset in self.datasets
        )

    def expected(self, method: str) -> dict[str, object]:
        """The pinned values for `method`: its own where tagged with it, else the untagged ones."""
        general = {key: value for key, value, tag in self.pins if tag is None}
        own = {key: value for key, value, tag in self.pins if tag == method}
        return {**general, **own}


def documented_sections(text: str) -> list[Section]:
    sections = []
    for chunk in text.split("\n## ")[1:]:
        title, _, body = chunk.partition("\n")
        targets = re.search(r"^Targets: (.+)$", body, re.MULTILINE)
        datasets = re.search(r"^Dataset: (.+)$", body, re.MULTILINE)
        section = Section(
            title,
            tuple(t.strip() for t in targets[1].split(",")) if targets else (),
            tuple(d.strip() for d in datasets[1].split(",")) if datasets else (),
        )
        for line in body.splitlines():
            columns = line.split("|")
            if line.startswith("|") and len(columns) == 7:  # | setting | table 6 | reference | ours | note |
                for key, value, method in PIN.findall(columns[4]):
                    section.pins.append((key, yaml.safe_load(value), method or None))
        if section.pins:
            sections.append(section)
    return sections


def sweep_axes(cell: Cell) -> set[str]:
    """The keys a preset sweeps (its cells' own axes): `backbone=swin_t` is `backbone.name`."""
    axes = set()
    for override in cell.overrides:
        key = override.split("=", 1)[0]
        axes.add(key if "." in key else f"{'data' if key == 'dataset' else key}.name")
    return axes


def resolved(cell: Cell, key: str) -> object:
    node = OmegaConf.select(cell.cfg, key, throw_on_missing=True)
    return OmegaConf.to_container(node, enum_to_str=True) if OmegaConf.is_config(node) else node


def same(actual: object, expected: object) -> bool:
    if isinstance(expected, float) or isinstance(actual, float):
        return actual == pytest.approx(expected, rel=1e-9)
    if hasattr(actual, "value"):  # an enum
        actual = actual.value
    return actual == expected


SECTIONS = documented_sections(DOC.read_text())


def test_the_document_has_a_section_per_task_and_pins_settings() -> None:
    titles = " ".join(section.title for section in SECTIONS)
    for task in ("COCO", "VOC0712", "ADE20K", "Classification", "Common"):
        assert task in titles
    assert all(len(section.pins) >= 3 for section in SECTIONS)


@pytest.mark.parametrize("target", PAPER_TARGETS)
def test_every_cell_of_a_paper_preset_has_the_documented_settings(target: str) -> None:
    cells = profile("paper").cells(target)
    used: set[str] = set()
    for cell in cells:
        method, dataset = cell.cfg.method.name, cell.cfg.data.name
        covering = [section for section in SECTIONS if section.covers(target, dataset)]
        assert any(section.targets for section in covering), f"no section of docs/protocol.md for {dataset}"
        for section in covering:
            used.add(section.title)
            for key, value in section.expected(method).items():
                if key in sweep_axes(cell):
                    continue
                actual = resolved(cell, key)
                assert same(actual, value), (
                    f"{target} {' '.join(cell.overrides)}: {key} = {actual}, doc {value}"
                )
    targeted = {section.title for section in SECTIONS if target in section.targets}
    assert targeted <= used, f"sections of table {target} that no cell reached: {targeted - used}"


# ---------------------------------------------------------------------------------------------
# Schedules: the mmcv policies, checked against the reference's logs and their closed forms


def recipe(*overrides: str):
    with config_session():
        return compose(config_name="config", overrides=list(overrides)).trainer


def test_ade20k_schedule_reproduces_the_reference_log() -> None:
    """`log/ade20k/mona.txt` prints the lr of Mona's run (6e-5 x 5) at these iterations (1-based)."""
    factor = lr_factor(recipe("dataset=ade20k", "method=mona"), steps_per_epoch=1263, total_steps=160_000)
    logged = {50: 9.797e-06, 1500: 2.970e-04, 1550: 2.971e-04, 159_950: 9.563e-08}
    for iteration, lr in logged.items():
        assert 3e-4 * factor(iteration - 1) == pytest.approx(lr, rel=6e-4)


def test_voc_schedule_reproduces_the_reference_log() -> None:
    """`log/voc/mona.txt`: lr 1e-4 in the first three repeated epochs, 1e-5 in the fourth."""
    per_pass = 8275  # VOC07+12 trainval, 16,551 images at batch 2
    factor = lr_factor(recipe("dataset=voc"), steps_per_epoch=per_pass, total_steps=12 * per_pass)
    for repeated_epoch, lr in ((0, 1e-4), (1, 1e-4), (2, 1e-4), (3, 1e-5)):
        first, last = 3 * repeated_epoch * per_pass, 3 * (repeated_epoch + 1) * per_pass - 1
        assert 1e-4 * factor(first) == pytest.approx(lr) and 1e-4 * factor(last) == pytest.approx(lr)


def test_coco_schedule_is_mmcv_step_with_linear_warmup() -> None:
    per_epoch = 1000
    factor = lr_factor(recipe("dataset=coco"), steps_per_epoch=per_epoch, total_steps=36 * per_epoch)

    def mmcv(i: int) -> float:  # step policy by epoch; linear warm-up multiplying it
        regular = 0.1 ** sum(i // per_epoch >= s for s in (27, 33))
        return regular * (1 - (1 - i / 500) * (1 - 0.001)) if i < 500 else regular

    for i in (0, 1, 250, 499, 500, 26_999, 27_000, 32_999, 33_000, 35_999):
        assert factor(i) == pytest.approx(mmcv(i), rel=1e-12)
    assert factor(0) == pytest.approx(0.001) and factor(33_000) == pytest.approx(0.01)


@pytest.mark.parametrize("dataset", ["flowers102", "pets", "voc2007"])
def test_classification_schedule_is_mmcv_cosine_with_a_20_epoch_warmup(dataset: str) -> None:
    per_epoch, total = 64, 100 * 64
    factor = lr_factor(recipe(f"dataset={dataset}"), steps_per_epoch=per_epoch, total_steps=total)

    def mmcv(i: int) -> float:  # CosineAnnealing by iteration to 1e-2; linear warm-up from 1e-3
        regular = 0.01 + 0.5 * (1 - 0.01) * (1 + math.cos(math.pi * i / total))
        warmup = 20 * per_epoch
        return regular * (1 - (1 - i / warmup) * (1 - 1e-3)) if i < warmup else regular

    for i in (0, 1, 640, 1279, 1280, 3200, 6399):
        assert factor(i) == pytest.approx(mmcv(i), rel=1e-12)


def test_exp_and_constant_warmups_follow_mmcv() -> None:
    base = recipe("dataset=coco")
    exp = lr_factor(OmegaConf.merge(base, {"warmup": "exp", "steps": []}), 100, 1000)
    constant = lr_factor(OmegaConf.merge(base, {"warmup": "constant", "steps": []}), 100, 1000)
    assert exp(100) == pytest.approx(0.001 ** (1 - 100 / 500)) and exp(500) == 1.0
    assert constant(499) == pytest.approx(0.001) and constant(500) == 1.0


def test_a_bad_schedule_or_protocol_name_fails_at_composition_naming_the_choices() -> None:
    with pytest.raises(ConfigCompositionException) as error:
        recipe("trainer.schedule=cosin")
    assert "expected one of [warmup_cosine, cosine, step, poly]" in str(error.value.__cause__)
    with pytest.raises(ConfigCompositionException, match="protocol/papr"):
        recipe("protocol=papr")


# ---------------------------------------------------------------------------------------------
# Weight decay as each config's paramwise_cfg; inits as the reference backbones


def _decayed_names(rules: list[NoDecay]) -> dict[str, bool]:
    """Every tensor of a fully trainable swin_micro with Mona and a head: decayed or not."""
    backbone = build_swin("swin_micro")
    METHODS["mona"](MonaConfig(name="mona")).apply(backbone)
    model = ClassificationModel(backbone, num_classes=4).requires_grad_(True)
    groups = parameter_groups(model, lr=1e-3, weight_decay=0.05, no_decay=rules)
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: g["weight_decay"] > 0 for g in groups for p in g["params"]}


BLOCK = "backbone.layers.0.blocks.0."


def test_classification_rules_exempt_norms_biases_and_tables_but_decay_monas_scales() -> None:
    decayed = _decayed_names([NoDecay.layer_norms, NoDecay.biases, NoDecay.position_tables])
    for exempt in (
        "norm1.weight",
        "attn.qkv.bias",
        "attn.relative_position_bias_table",
        "slots.post_attn.norm.bias",
    ):
        assert not decayed[BLOCK + exempt], exempt
    assert not decayed["head.bias"]
    for name in ("slots.post_attn.gamma", "slots.post_attn.gammax", "attn.qkv.weight"):
        assert decayed[BLOCK + name], name


def test_dense_rules_decay_biases_and_monas_ade20k_rule_decays_norms() -> None:
    dense = _decayed_names([NoDecay.layer_norms, NoDecay.position_tables])
    assert dense[BLOCK + "attn.qkv.bias"] and dense[BLOCK + "slots.post_attn.gamma"]
    assert not dense[BLOCK + "norm2.bias"] and not dense[BLOCK + "slots.post_mlp.norm.weight"]
    mona_ade20k = _decayed_names([NoDecay.position_tables])
    assert (
        mona_ade20k[BLOCK + "norm1.weight"] and not mona_ade20k[BLOCK + "attn.relative_position_bias_table"]
    )


def _linears(method: str, init: MethodInit) -> dict[str, torch.Tensor]:
    config = {"adapter": AdapterConfig, "adaptformer": AdaptFormerConfig}[method](name=method, init=init)
    backbone = build_swin("swin_micro")
    METHODS[method](config).apply(backbone)
    return {n: p.detach() for n, p in backbone.named_parameters() if p.requires_grad}


def _pooled(tensors: dict[str, torch.Tensor], suffix: str) -> torch.Tensor:
    return torch.cat([t.flatten() for n, t in tensors.items() if n.endswith(suffix)])


@pytest.mark.parametrize("method", ["adapter", "adaptformer"])
def test_reference_init_is_trunc_normal_002_with_zero_bias(method: str) -> None:
    tensors = _linears(method, MethodInit.reference)
    for projection in ("down", "up"):
        weights = _pooled(tensors, f"{projection}.weight")
        assert weights.std().item() == pytest.approx(0.02, rel=0.05)
        assert weights.abs().max().item() <= 2.0  # trunc_normal_'s absolute cut-off
        assert torch.count_nonzero(_pooled(tensors, f"{projection}.bias")) == 0


def test_original_inits_are_the_methods_own() -> None:
    houlsby = _pooled(_linears("adapter", MethodInit.original), "up.weight")
    assert houlsby.std().item() == pytest.approx(1e-3, rel=0.05)
    adaptformer = _linears("adaptformer", MethodInit.original)
    assert torch.count_nonzero(_pooled(adaptformer, "up.weight")) == 0
    assert _pooled(adaptformer, "down.weight").std().item() > 0.01


@pytest.mark.parametrize(("init", "std"), [(HeadInit.normal, 0.01), (HeadInit.trunc_normal, 0.02)])
def test_classification_head_init(init: HeadInit, std: float) -> None:
    torch.manual_seed(0)
    head = ClassificationModel(build_swin("swin_micro"), num_classes=100, init=init).head
    assert head.weight.std().item() == pytest.approx(std, rel=0.05)
    assert torch.count_nonzero(head.bias) == 0


# ---------------------------------------------------------------------------------------------
# Run identity and the record of a paper-protocol run


def test_new_keys_at_their_neutral_values_leave_the_protocol_hash_alone() -> None:
    with config_session():
        default = compose(config_name="config")
        mmcv = compose(config_name="config", overrides=["trainer.schedule=cosine"])
        paper = compose(config_name="config", overrides=["protocol=paper"])
        deterministic = compose(config_name="config", overrides=["trainer.deterministic=true"])
        tf32 = compose(config_name="config", overrides=["trainer.tf32=true"])
        voc2007 = compose(config_name="config", overrides=["data.voc2007_only=true"])
        scenes = compose(config_name="config", overrides=["data.max_objects=2"])
        single = compose(config_name="config", overrides=["dataset=shapes_single"])
        detection = compose(config_name="config", overrides=["dataset=shapes_det"])
        plain_head = compose(config_name="config", overrides=["dataset=shapes_det", "head.group_norm=false"])
        ade20k = compose(config_name="config", overrides=["dataset=ade20k"])
        coco = compose(config_name="config", overrides=["dataset=coco"])
        instance = compose(config_name="config", overrides=["dataset=shapes_inst"])
    assert "schedule" not in protocol_of(default)["trainer"] and "init" not in protocol_of(default)["head"]
    assert "box_fc_channels" not in protocol_of(coco)["head"]  # the reference's 1024
    assert protocol_of(instance)["head"]["box_fc_channels"] == 256  # the embedded recipe's width is hashed
    assert "group_norm" not in protocol_of(plain_head)["head"]  # the embedded recipe's GroupNorm is hashed
    assert protocol_of(detection)["head"]["group_norm"] is True
    assert not {"deterministic", "tf32"} & set(protocol_of(default)["trainer"])
    assert "voc2007_only" not in protocol_of(default)["data"]
    unset = protocol_of(single)["data"]  # shapes_single sets no scene key (shapes sets its object scale)
    assert not {"object_scale", "distractor_scale", "max_objects"} & set(unset)
    hashes = {protocol_hash(cfg) for cfg in (default, mmcv, paper, deterministic, tf32, voc2007, scenes)}
    assert len(hashes) == 7
    # The ADE20K reference's fp32 ran its matmuls in TF32 (RTX 3090, PyTorch 1.8.1): its preset too.
    assert protocol_of(ade20k)["trainer"]["tf32"] is True


def test_a_shipped_checkpoints_revision_enters_the_hash_after_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs on a replaced shipped checkpoint never pass for runs on the one it replaced; runs on a
    first revision keep the hashes they had before revisions existed."""
    first, replaced = tmp_path / "first", tmp_path / "replaced"  # a folder each: revisions are cached by path
    monkeypatch.setattr(shipped, "PRETRAINED_DIR", first)  # no sidecars: every file a first revision
    with config_session():
        cfg = compose(config_name="config", overrides=["backbone=swin_micro", "backbone.weights=mini"])
    before = protocol_hash(cfg)
    assert "weights_revision" not in protocol_of(cfg)["backbone"]
    replaced.mkdir()
    sidecar = replaced / BACKBONES["swin_micro"].shipped["mini"].replace(".safetensors", ".json")
    sidecar.write_text(json.dumps({"revision": 2}))
    monkeypatch.setattr(shipped, "PRETRAINED_DIR", replaced)
    assert protocol_of(cfg)["backbone"]["weights_revision"] == 2
    assert protocol_hash(cfg) != before
    with config_session():
        other = compose(config_name="config", overrides=["backbone=swin_nano", "backbone.weights=mini"])
    assert "weights_revision" not in protocol_of(other)["backbone"]  # no sidecar there: the first


def test_a_paper_protocol_run_trains_on_everything_and_reports_its_last_checkpoint(results_dir: Path) -> None:
    done = run_cli(*SMOKE, "method=fixed", "protocol=paper", results_dir=results_dir)
    assert done.returncode == 0, done.stderr
    [record] = records(results_dir)
    assert record["protocol"] == "paper" and "none (no model selection)" in record["best"]["split"]
    assert record["metrics"] == record["metrics_last"] and record["metrics_selected"] is None
    assert record["best"]["value"] is None and record["val_history"] == []
    assert record["steps"] == 2 * (256 // 32)  # two epochs of the 256 training scenes at batch 32
