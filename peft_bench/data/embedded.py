"""The embedded datasets of every task: disjoint index ranges of one seeded scene generator."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from peft_bench.config import DataConfig, Selection
from peft_bench.data.base import TaskData
from peft_bench.data.scenes import SceneGenerator, SceneView, make_splits
from peft_bench.data.splits import selection_of, without_holdout


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
