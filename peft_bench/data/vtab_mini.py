"""The embedded VTAB: seven tasks of procedural scenes standing for VTAB-1k's three groups, offline.

Each task is a labelling of `peft_bench.data.scenes` drawn with its own options, so every label is
exact: natural (the class of the largest object, over textures and clutter, as `shapes`),
specialized (the background's pattern: DTD's texture classes) and five structured tasks on clean
sprites, the analogues of CLEVR-Count, CLEVR-Dist, dSprites-Ori, dSprites-Loc and smallNORB's pose:
the number of objects, the distance of the nearest object to the bottom centre (the "camera"), an
asymmetric object's orientation, its x position and its size. A frozen backbone's pooled features
carry the class of an object, not where it is, how large or how turned: the structured tasks are
where a method must really adapt the backbone.

Splits as VTAB-1k's: 800 training and 200 validation scenes (train800, val200, together
train800val200) and a separate test split, disjoint index ranges of one generator per task. No
augmentation, as VTAB (a flip would change position and orientation labels).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch

from peft_bench.config import DataConfig, Selection
from peft_bench.data.base import TaskData
from peft_bench.data.embedded import scene_options
from peft_bench.data.scenes import DOWNSTREAM_CLASSES, PATTERNS, Scene, SceneGenerator, SceneView, to_tensor
from peft_bench.data.splits import selection_of, without_holdout
from peft_bench.data.suites import VTAB_MINI
from peft_bench.data.transforms import tensor_transforms

TRAIN, VAL, TEST = 800, 200, 1000  # VTAB-1k's train800 / val200, and a test split of the task's own
BINS = {"distance": 6, "orientation": 16, "position": 16, "size": 8}
SPRITE = {"style": "upstream", "max_aspect": 1.0}  # clean scenes: flat or gradient, no clutter or noise
SIZE_RANGE = (0.08, 0.4)  # the size task's object radii, fractions of the image side
ASYMMETRIC = ("arrow", "heart", "t_shape", "drop")  # kinds whose every rotation looks different


def _bin(value: float, low: float, high: float, bins: int) -> int:
    """`value` in [low, high] as one of `bins` equal intervals."""
    return int(np.clip((value - low) / (high - low) * bins, 0, bins - 1))


def _count(scene: Scene, size: int) -> int:
    return len(scene.labels) - 1


def _distance(scene: Scene, size: int) -> int:
    """The nearest object's centre to the bottom centre, in image sides, in 6 bins over [0, 1]."""
    nearest = np.hypot(scene.poses[:, 0] - size / 2, scene.poses[:, 1] - size).min() / size
    return _bin(nearest, 0.0, 1.0, BINS["distance"])


def _orientation(scene: Scene, size: int) -> int:
    return _bin(float(scene.poses[0, 3]) % (2 * np.pi), 0.0, 2 * np.pi, BINS["orientation"])


def _position(scene: Scene, size: int) -> int:
    """The centre's x over the range a centre can take (the radius is fixed), in 16 bins."""
    x, radius = scene.poses[0, 0], scene.poses[0, 2]
    return _bin(float(x), float(radius), size - float(radius), BINS["position"])


def _size(scene: Scene, size: int) -> int:
    return _bin(float(scene.poses[0, 2]) / size, *SIZE_RANGE, BINS["size"])


@dataclass(frozen=True)
class MiniTask:
    """A task: how its scenes are drawn (`SceneGenerator` options) and labelled."""

    label: Callable[[Scene, int], int]  # (scene, image side) -> class
    classes: tuple[str, ...] = DOWNSTREAM_CLASSES  # the shape kinds drawn
    options: dict[str, Any] = field(default_factory=dict)


MINI_TASKS: dict[str, MiniTask] = {
    "vtab_mini_objects": MiniTask(lambda scene, size: scene.label),
    "vtab_mini_textures": MiniTask(
        lambda scene, size: list(PATTERNS).index(scene.background), options={"style": "textures"}
    ),
    "vtab_mini_count": MiniTask(
        _count, options={**SPRITE, "max_objects": 6, "scale": (0.08, 0.12), "distractor_scale": (0.8, 1.0)}
    ),
    "vtab_mini_distance": MiniTask(
        _distance, options={**SPRITE, "max_objects": 4, "scale": (0.08, 0.12), "distractor_scale": (0.8, 1.0)}
    ),
    "vtab_mini_orientation": MiniTask(
        _orientation, ASYMMETRIC, {**SPRITE, "max_objects": 1, "scale": (0.25, 0.35)}
    ),
    "vtab_mini_position": MiniTask(_position, options={**SPRITE, "max_objects": 1, "scale": (0.1, 0.1)}),
    "vtab_mini_size": MiniTask(_size, options={**SPRITE, "max_objects": 1, "scale": SIZE_RANGE}),
}


class LabelledScenes(SceneView):
    """(image float (3, H, W), label int) with the task's label."""

    def __init__(
        self,
        generator: SceneGenerator,
        size: int,
        offset: int,
        transform: Callable[[torch.Tensor], torch.Tensor],
        label: Callable[[Scene, int], int],
    ) -> None:
        super().__init__(generator, size, offset, transform)
        self.label = label

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        scene = self.scene(i)
        return self.transform(to_tensor(scene.image)), self.label(scene, self.generator.img_size)


def build_vtab_mini(cfg: DataConfig, img_size: int, seed: int, task: str) -> TaskData:
    """The splits of the embedded VTAB task `task`, as VTAB-1k's lists by `data.selection_split`:
    val -> train800, val200; none -> train800val200; test -> train800val200, val = test."""
    spec = MINI_TASKS[task]
    generator = SceneGenerator(
        spec.classes, img_size=cfg.image_size or img_size, seed=seed, **scene_options(cfg, **spec.options)
    )
    transform = tensor_transforms(train=False, normalization=cfg.normalization)
    train, val = cfg.train_size or TRAIN, cfg.val_size or VAL
    view = partial(LabelledScenes, generator, transform=transform, label=spec.label)
    test = view(cfg.test_size or TEST, train + val)
    selection = selection_of(cfg)
    if selection is Selection.val:
        described = (
            f"val: scenes {train}-{train + val - 1} (val200); trained on scenes 0-{train - 1} (train800)"
        )
        return _task_data(task, view(train, 0), view(val, train), test, described)
    trained_on = f"scenes 0-{train + val - 1} (train800val200)"
    val_split, described = without_holdout(selection, test, trained_on)
    return _task_data(task, view(train + val, 0), val_split, test, described)


def _task_data(
    task: str, train: SceneView, val: SceneView | None, test: SceneView, selection: str
) -> TaskData:
    classes = VTAB_MINI.task(task).num_classes
    return TaskData(train, val, test, classes, [str(c) for c in range(classes)], selection)


VTAB_MINI_DATASETS = {task: partial(build_vtab_mini, task=task) for task in MINI_TASKS}
