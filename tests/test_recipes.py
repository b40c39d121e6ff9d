"""Each dataset brings its training recipe (conf/trainer), which the command line can replace."""

from __future__ import annotations

import numpy as np
import pytest
from hydra import compose

from peft_bench.builder import build_data
from peft_bench.errors import UserError
from peft_bench.report.grid import config_session


def composed(*overrides: str):
    with config_session():
        return compose(config_name="config", overrides=list(overrides))


@pytest.mark.parametrize(
    ("dataset", "lr", "epochs", "iterations"),
    [
        ("shapes", 1e-3, 10, None),  # the default recipe
        ("flowers102", 1.5625e-5, 100, None),  # paper_cls
        ("voc", 1e-4, 12, None),  # voc_det
        ("coco", 1e-4, 36, None),  # coco_inst
        ("ade20k", 6e-5, 10, 160_000),  # ade20k_seg
        ("shapes_seg", 1e-4, 8, None),
        ("shapes_det", 1e-4, 6, None),
        ("shapes_inst", 1e-4, 4, None),
    ],
)
def test_a_dataset_selects_its_recipe(dataset: str, lr: float, epochs: int, iterations: int | None) -> None:
    trainer = composed(f"dataset={dataset}").trainer
    assert (trainer.lr, trainer.epochs, trainer.iterations) == (pytest.approx(lr), epochs, iterations)


@pytest.mark.parametrize("dataset", ["shapes_single", "shapes_det", "shapes_seg", "vtab_mini_count"])
def test_an_embedded_datasets_scene_keys_reach_its_generator(dataset: str) -> None:
    """Unset, the dataset's own scenes (shapes_single: one large object); set, what the keys say, for
    every split it has, and the scenes change with them."""
    own = build_data(composed(f"dataset={dataset}", "data.train_size=4")).train.generator
    keys = ("data.object_scale=[0.2,0.25]", "data.distractor_scale=[0.9,1.0]", "data.max_objects=4")
    data = build_data(composed(f"dataset={dataset}", "data.train_size=4", *keys))
    for split in (s for s in (data.train, data.val, data.test) if s is not None):
        chosen = split.generator
        assert (chosen.scale, chosen.distractor_scale, chosen.max_objects) == ((0.2, 0.25), (0.9, 1.0), 4)
    assert own.scale != (0.2, 0.25) and (dataset != "shapes_single" or own.max_objects == 1)
    assert not np.array_equal(data.train.scene(0).image, own.scene(0).image)


def test_the_dense_tasks_read_the_same_scenes() -> None:
    """Detection, instance and semantic segmentation label the same generated scenes (one scene
    recipe, docs/embedded.md), each in its own way."""
    generators = [
        build_data(composed(f"dataset={name}", "data.train_size=4")).train.generator
        for name in ("shapes_det", "shapes_inst", "shapes_seg")
    ]
    options = {(g.img_size, g.scale, g.distractor_scale, g.max_objects, g.seed) for g in generators}
    assert options == {(64, (0.25, 0.4), (0.6, 1.0), 2, 0)}
    scenes = [g.scene(3) for g in generators]
    assert all(np.array_equal(scenes[0].image, other.image) for other in scenes[1:])


@pytest.mark.parametrize(
    "key",
    [
        "data.object_scale=[0.3]",
        "data.object_scale=[0.4,0.3]",
        "data.object_scale=[0.3,0.6]",
        "data.distractor_scale=[0,0.5]",
        "data.distractor_scale=[0.5,1.5]",
        "data.max_objects=0",
    ],
)
def test_a_bad_scene_key_is_a_one_paragraph_error_naming_it(key: str) -> None:
    with pytest.raises(UserError) as error:
        build_data(composed("dataset=shapes_det", "data.train_size=4", key))
    assert key.split("=")[0] in str(error.value) and "\n" not in str(error.value)


def test_the_command_line_recipe_wins_over_the_datasets() -> None:
    assert composed("dataset=voc", "trainer=default").trainer.lr == pytest.approx(1e-3)
    assert composed("dataset=voc", "trainer.lr=3e-4").trainer.lr == pytest.approx(3e-4)


def test_mona_trains_at_the_papers_multiplier_per_recipe() -> None:
    assert composed("dataset=pets").trainer.method_lr_mult == {"mona": 2.0}
    assert composed("dataset=ade20k").trainer.method_lr_mult == {"mona": 5.0}
    assert composed("dataset=shapes_seg").trainer.head_lr_mult == 30.0


@pytest.mark.parametrize(
    ("dataset", "backbone", "drop_path", "frozen"),
    [
        ("voc", "swin_l", 0.2, 1),
        ("ade20k", "swin_l", 0.3, -1),
        ("coco", "swin_b", 0.3, -1),
        ("flowers102", "swin_l", 0.3, -1),
        ("pets", "swin_l", 0.3, -1),
        ("voc2007", "swin_l", 0.3, -1),
    ],
)
def test_a_paper_dataset_alone_brings_the_papers_backbone_and_protocol(
    dataset: str, backbone: str, drop_path: float, frozen: int
) -> None:
    cfg = composed(f"dataset={dataset}", "method=full")
    assert (cfg.backbone.name, cfg.backbone.weights) == (backbone, "in22k")
    assert (cfg.backbone.drop_path_rate, cfg.backbone.frozen_stages) == (drop_path, frozen)
    assert cfg.data.selection_split == "none"  # protocol=paper


def test_embedded_datasets_keep_the_cpu_backbone_and_the_harness_protocol() -> None:
    cfg = composed("dataset=shapes_det")
    assert (cfg.backbone.name, cfg.backbone.weights, cfg.data.selection_split) == (
        "swin_micro",
        "mini",
        "val",
    )


def test_the_command_line_wins_over_a_paper_datasets_backbone_and_protocol() -> None:
    cfg = composed("dataset=voc", "backbone=swin_t", "protocol=harness")
    assert (cfg.backbone.name, cfg.backbone.drop_path_rate, cfg.data.selection_split) == (
        "swin_t",
        0.2,
        "val",
    )


def test_mona_on_ade20k_brings_its_own_drop_path_and_decay_rules() -> None:
    mona, full = composed("dataset=ade20k", "method=mona"), composed("dataset=ade20k", "method=full")
    assert (mona.backbone.drop_path_rate, full.backbone.drop_path_rate) == (0.2, 0.3)
    assert list(mona.trainer.no_decay) == ["position_tables"]
    assert list(full.trainer.no_decay) == ["layer_norms", "position_tables"]
