"""The embedded datasets of every task: disjoint index ranges of one seeded scene generator.

Each task's view of the scenes (`peft_bench.data.scenes`) is built here, at a side chosen by
`scene_size`: nothing to download, minutes on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from peft_bench.backbones import image_size
from peft_bench.config import Config, DataConfig, Selection
from peft_bench.data.ade20k import FlipNormalise
from peft_bench.data.base import TaskData, collate_lists
from peft_bench.data.scenes import (
    DOWNSTREAM_CLASSES,
    SceneClassification,
    SceneDetection,
    SceneGenerator,
    SceneSegmentation,
    SceneView,
    make_splits,
)
from peft_bench.data.splits import selection_of, without_holdout
from peft_bench.data.targets import RandomFlip, Target
from peft_bench.data.transforms import tensor_transforms
from peft_bench.errors import UserError


def scene_size(cfg: Config, default: int | None = None) -> int:
    """The side of generated scenes: `data.image_size`, else `default`, else the backbone's image size."""
    return cfg.data.image_size or default or image_size(cfg.backbone)


def scene_options(cfg: DataConfig, **defaults: Any) -> dict[str, Any]:
    """A dataset's `SceneGenerator` options (`defaults`), overridden by the config's scene keys,
    checked: a bad range would otherwise draw nonsense scenes without a word."""
    chosen: dict[str, Any] = {}
    if cfg.object_scale is not None:  # a centred disc of the main object's radius must fit the image
        chosen["scale"] = _checked_range("data.object_scale", cfg.object_scale, most=0.5)
    if cfg.distractor_scale is not None:  # no distractor larger than the main object
        chosen["distractor_scale"] = _checked_range("data.distractor_scale", cfg.distractor_scale, most=1.0)
    if cfg.max_objects is not None:
        if cfg.max_objects < 1:
            raise UserError(f"data.max_objects={cfg.max_objects}: a scene holds at least one object.")
        chosen["max_objects"] = cfg.max_objects
    return defaults | chosen


def _checked_range(key: str, value: Sequence[float], most: float) -> tuple[float, float]:
    if len(value) != 2 or not 0 < value[0] <= value[1] <= most:
        raise UserError(
            f"{key}={list(value)} is not a range: give two numbers [low, high] with "
            f"0 < low <= high <= {most}, e.g. {key}=[0.3,0.45]."
        )
    return float(value[0]), float(value[1])


def scene_task_data(
    cfg: DataConfig,
    view: type[SceneView],
    generator: SceneGenerator,
    transforms: Mapping[str, Callable],
    default_sizes: tuple[int, int, int],
    collate_fn: Callable | None = None,
    background_class: bool = False,
) -> TaskData:
    """Train, val and test views of `generator` (sizes from `data.train_size`, ... or the defaults).

    `background_class` makes the background class 0 (semantic segmentation); the detection views
    label objects class + 1 with 0 reserved, as torchvision's detectors do.
    """
    train, val, test = default_sizes
    sizes = {"train": cfg.train_size or train, "val": cfg.val_size or val, "test": cfg.test_size or test}
    splits = make_splits(view, generator, sizes, transforms)
    selection = selection_of(cfg)
    if selection is Selection.val:
        described = (
            f"val: {sizes['val']} generated scenes disjoint from train and test (seed {cfg.split_seed})"
        )
    else:
        trained_on = f"the {sizes['train']} generated training scenes"
        splits["val"], described = without_holdout(selection, splits["test"], trained_on)
    names = list(generator.classes)
    return TaskData(
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        num_classes=len(names) + background_class,
        class_names=["background", *names] if background_class else names,
        selection=described,
        collate_fn=collate_fn,
    )


def build_scene_classification(
    cfg: DataConfig, img_size: int, seed: int, **generator_options: Any
) -> TaskData:
    """Embedded scenes (`peft_bench.data.scenes`) labelled with the class of their largest object,
    drawn at `data.image_size`."""
    generator = SceneGenerator(
        img_size=cfg.image_size or img_size, seed=seed, **scene_options(cfg, **generator_options)
    )
    evaluation = tensor_transforms(train=False, normalization=cfg.normalization)
    training = tensor_transforms(train=True, normalization=cfg.normalization)
    transforms = {"train": training, "val": evaluation, "test": evaluation}
    return scene_task_data(cfg, SceneClassification, generator, transforms, (2000, 500, 1000))


class SceneBoxes:
    """The detection view of a scene: its boxes and labels (masks dropped), flipped at random in training."""

    def __init__(self, train: bool) -> None:
        self.flip = RandomFlip(0.5) if train else None

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        boxes = {"boxes": target["boxes"], "labels": target["labels"]}
        return self.flip(image, boxes) if self.flip else (image, boxes)


def build_scene_detection_data(cfg: DataConfig, image_size: int) -> TaskData:
    """The embedded scenes' boxes over the ten downstream shape classes, generated at `image_size`."""
    generator = SceneGenerator(
        DOWNSTREAM_CLASSES, img_size=image_size, seed=cfg.split_seed, **scene_options(cfg)
    )
    transforms = {
        "train": SceneBoxes(train=True),
        "val": SceneBoxes(train=False),
        "test": SceneBoxes(train=False),
    }
    return scene_task_data(cfg, SceneDetection, generator, transforms, (2000, 300, 500), collate_lists)


def build_scene_instance_data(cfg: DataConfig, image_size: int) -> TaskData:
    """The embedded scenes (`peft_bench.data.scenes`) of the ten downstream shape kinds with their
    instance masks, generated at `image_size`."""
    generator = SceneGenerator(
        DOWNSTREAM_CLASSES, img_size=image_size, seed=cfg.split_seed, **scene_options(cfg)
    )
    return scene_task_data(
        cfg, SceneDetection, generator, {"train": RandomFlip()}, (1000, 200, 200), collate_lists
    )


def build_scene_segmentation(cfg: DataConfig, image_size: int) -> TaskData:
    """The embedded scenes' semantic maps: 11 classes, the background a class of its own (it is a
    real region of each scene, unlike ADE20K's "other")."""
    generator = SceneGenerator(
        DOWNSTREAM_CLASSES, img_size=image_size, seed=cfg.split_seed, **scene_options(cfg)
    )
    evaluation = FlipNormalise(train=False)
    transforms = {"train": FlipNormalise(train=True), "val": evaluation, "test": evaluation}
    return scene_task_data(
        cfg, SceneSegmentation, generator, transforms, (1000, 200, 200), collate_lists, True
    )
