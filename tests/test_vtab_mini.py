"""The embedded VTAB: every task's labels in range and as its suite says, the structured labels
recomputed from the drawn masks (not from the poses that made them), and VTAB-1k's splits."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from peft_bench.config import DataConfig, Selection
from peft_bench.data.scenes import PATTERNS, SceneGenerator
from peft_bench.data.suites import NATURAL, SPECIALIZED, STRUCTURED, VTAB_MINI, suite_of
from peft_bench.data.vtab_mini import BINS, MINI_TASKS, SIZE_RANGE, build_vtab_mini

SIDE = 64
SCENES = 120


def generator(task: str) -> SceneGenerator:
    spec = MINI_TASKS[task]
    return SceneGenerator(spec.classes, img_size=SIDE, seed=0, **spec.options)


def agreement(task: str, from_masks) -> float:
    """How often the task's label equals one recomputed from the scene's visible masks."""
    gen, label = generator(task), MINI_TASKS[task].label
    scenes = [gen.scene(i) for i in range(SCENES)]
    return float(np.mean([label(scene, SIDE) == from_masks(scene) for scene in scenes]))


def centroid(mask: np.ndarray) -> tuple[float, float]:
    rows, cols = np.nonzero(mask)
    return cols.mean() + 0.5, rows.mean() + 0.5


def test_the_suite_has_the_three_groups_and_every_task_a_builder() -> None:
    assert VTAB_MINI.groups == (NATURAL, SPECIALIZED, STRUCTURED)
    assert [task.name for task in VTAB_MINI.tasks] == list(MINI_TASKS)
    assert suite_of("vtab_mini_count") is VTAB_MINI and suite_of("shapes") is None


@pytest.mark.parametrize("task", list(MINI_TASKS))
def test_labels_lie_in_the_tasks_classes_and_most_classes_occur(task: str) -> None:
    gen, label = generator(task), MINI_TASKS[task].label
    labels = [label(gen.scene(i), SIDE) for i in range(200)]
    classes = VTAB_MINI.task(task).num_classes
    assert min(labels) >= 0 and max(labels) < classes
    assert len(set(labels)) >= 0.75 * classes


def test_count_is_the_number_of_visible_objects() -> None:
    assert agreement("vtab_mini_count", lambda scene: int(scene.masks.any((1, 2)).sum()) - 1) == 1.0


def test_textures_label_every_background_pattern_about_equally_often() -> None:
    """Six classes, one per pattern the generator drew as the background, none rare."""
    gen, label = generator("vtab_mini_textures"), MINI_TASKS["vtab_mini_textures"].label
    scenes = [gen.scene(i) for i in range(SCENES)]
    labels = [label(scene, SIDE) for scene in scenes]
    assert [list(PATTERNS)[k] for k in labels] == [scene.background for scene in scenes]
    counts = np.bincount(labels, minlength=VTAB_MINI.task("vtab_mini_textures").num_classes)
    assert len(counts) == len(PATTERNS) == 6 and counts.min() >= SCENES / 6 / 2


def test_position_size_and_distance_agree_with_the_drawn_masks() -> None:
    def position(scene) -> int:  # the one object's mask centroid over the range of a centre
        x, _ = centroid(scene.masks[0])
        radius = 0.1 * SIDE
        return int(np.clip((x - radius) / (SIDE - 2 * radius) * BINS["position"], 0, BINS["position"] - 1))

    def size(scene) -> int:  # the radius of the disc of the mask's area (every kind has the disc's area)
        radius = np.sqrt(scene.masks[0].sum() / np.pi) / SIDE
        low, high = SIZE_RANGE
        return int(np.clip((radius - low) / (high - low) * BINS["size"], 0, BINS["size"] - 1))

    def distance(scene) -> int:  # the nearest visible object's mask centroid to the bottom centre
        nearest = min(np.hypot(x - SIDE / 2, y - SIDE) for x, y in map(centroid, scene.masks)) / SIDE
        return int(np.clip(nearest * BINS["distance"], 0, BINS["distance"] - 1))

    # Rasterising moves a centroid by a fraction of a pixel: a label near a bin's edge may differ.
    assert agreement("vtab_mini_position", position) >= 0.85
    assert agreement("vtab_mini_size", size) >= 0.85
    assert agreement("vtab_mini_distance", distance) >= 0.8


def test_orientation_is_the_turn_that_best_matches_the_drawn_mask() -> None:
    """The bin whose centre angle, drawn at the object's place and size, overlaps its mask most."""
    gen = generator("vtab_mini_orientation")
    bins = BINS["orientation"]

    def best_turn(scene) -> int:
        (x, y, radius, _), kind = scene.poses[0], gen.classes[scene.labels[0]]
        ious = []
        for k in range(bins):
            drawn = gen._object_mask(kind, radius, 1.0, (k + 0.5) * 2 * np.pi / bins, np.array([x, y]))
            ious.append((drawn & scene.masks[0]).sum() / (drawn | scene.masks[0]).sum())
        return int(np.argmax(ious))

    assert agreement("vtab_mini_orientation", best_turn) >= 0.85


def config(selection: Selection, **sizes: int) -> DataConfig:
    return OmegaConf.structured(DataConfig(name="vtab_mini_count", selection_split=selection, **sizes))


@pytest.mark.parametrize(
    "selection, sizes",
    [
        (Selection.val, (800, 200, 1000)),
        (Selection.none, (1000, None, 1000)),
        (Selection.test, (1000, 1000, 1000)),
    ],
)
def test_splits_are_vtabs_lists(selection: Selection, sizes: tuple) -> None:
    data = build_vtab_mini(config(selection), SIDE, 0, task="vtab_mini_count")
    train, val, test = sizes
    assert len(data.train) == train and len(data.test) == test
    assert (data.val is None) if val is None else len(data.val) == val
    if selection is Selection.test:
        assert data.val is data.test
    assert data.num_classes == 6
    image, label = data.train[0]
    assert image.shape == (3, SIDE, SIDE) and 0 <= label < 6


def test_normalization_none_leaves_the_scenes_in_the_unit_range() -> None:
    cfg = OmegaConf.structured(DataConfig(name="vtab_mini_size", normalization="none"))
    image, _ = build_vtab_mini(cfg, SIDE, 0, task="vtab_mini_size").test[0]
    normalised, _ = build_vtab_mini(config(Selection.none), SIDE, 0, task="vtab_mini_size").test[0]
    assert image.min() >= 0.0 and image.max() <= 1.0 and normalised.min() < 0.0


def test_splits_are_disjoint_scenes_and_the_same_under_every_selection() -> None:
    tuned = build_vtab_mini(config(Selection.val), SIDE, 0, task="vtab_mini_size")
    final = build_vtab_mini(config(Selection.none), SIDE, 0, task="vtab_mini_size")
    assert set(tuned.train.indices).isdisjoint(tuned.val.indices)
    assert set(final.train.indices) == set(tuned.train.indices) | set(tuned.val.indices)
    assert set(final.train.indices).isdisjoint(final.test.indices)
    assert (final.test[5][0] == tuned.test[5][0]).all()
