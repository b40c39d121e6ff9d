"""The embedded scene generator: determinism, consistency of the four tasks' targets, and views."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from peft_bench.data.scenes import (
    DOWNSTREAM_CLASSES,
    SHAPE_KINDS,
    UPSTREAM_CLASSES,
    Scene,
    SceneClassification,
    SceneDetection,
    SceneGenerator,
    SceneSegmentation,
    make_splits,
    split_vocabulary,
)

SIZE = 48


@pytest.fixture(scope="module")
def generator() -> SceneGenerator:
    return SceneGenerator(DOWNSTREAM_CLASSES, img_size=SIZE, seed=3, max_objects=4)


@pytest.fixture(scope="module")
def scenes(generator: SceneGenerator) -> list[Scene]:
    return [generator.scene(i) for i in range(60)]


def test_vocabularies_are_disjoint_and_cover_the_kinds() -> None:
    assert len(SHAPE_KINDS) >= 24 and len(set(SHAPE_KINDS)) == len(SHAPE_KINDS)
    assert len(DOWNSTREAM_CLASSES) == 10
    assert not set(DOWNSTREAM_CLASSES) & set(UPSTREAM_CLASSES)
    assert set(DOWNSTREAM_CLASSES) | set(UPSTREAM_CLASSES) == set(SHAPE_KINDS)
    with pytest.raises(ValueError):
        split_vocabulary(["no_such_shape"])


def test_scene_is_a_pure_function_of_seed_and_index(generator: SceneGenerator) -> None:
    again = SceneGenerator(DOWNSTREAM_CLASSES, img_size=SIZE, seed=3, max_objects=4)
    for index in (0, 7, 12345):
        a, b = generator.scene(index), again.scene(index)
        for field in dataclasses.fields(Scene):
            np.testing.assert_array_equal(getattr(a, field.name), getattr(b, field.name))
    assert not np.array_equal(generator.scene(0).image, generator.scene(1).image)
    other_seed = SceneGenerator(DOWNSTREAM_CLASSES, img_size=SIZE, seed=4, max_objects=4)
    assert not np.array_equal(generator.scene(0).image, other_seed.scene(0).image)


def test_dtypes_and_shapes(scenes: list[Scene]) -> None:
    for scene in scenes:
        n = len(scene.labels)
        assert 1 <= n <= 4
        assert scene.image.dtype == np.uint8 and scene.image.shape == (SIZE, SIZE, 3)
        assert scene.boxes.dtype == np.float32 and scene.boxes.shape == (n, 4)
        assert scene.labels.dtype == np.int64 and scene.labels.shape == (n,)
        assert scene.masks.dtype == bool and scene.masks.shape == (n, SIZE, SIZE)
        assert scene.semantic.dtype == np.int64 and scene.semantic.shape == (SIZE, SIZE)
        assert isinstance(scene.label, int) and 0 <= scene.label < len(DOWNSTREAM_CLASSES)
        assert ((scene.labels >= 0) & (scene.labels < len(DOWNSTREAM_CLASSES))).all()


def test_targets_agree_with_each_other(generator: SceneGenerator, scenes: list[Scene]) -> None:
    for scene in scenes:
        assert scene.masks.sum(0).max() <= 1  # visible masks never overlap
        areas = scene.masks.sum((1, 2))
        assert (areas >= generator.min_area).all()
        assert scene.label == scene.labels[areas.argmax()]
        expected = np.zeros((SIZE, SIZE), dtype=np.int64)
        for mask, label in zip(scene.masks, scene.labels, strict=True):
            expected[mask] = label + 1
        np.testing.assert_array_equal(scene.semantic, expected)
        for box, mask in zip(scene.boxes, scene.masks, strict=True):
            x0, y0, x1, y1 = box.astype(int)
            assert mask[y0:y1, x0:x1].sum() == mask.sum()  # the box holds the whole mask, tightly:
            assert mask[y0].any() and mask[y1 - 1].any() and mask[:, x0].any() and mask[:, x1 - 1].any()


def test_scenes_vary(scenes: list[Scene]) -> None:
    assert len({s.label for s in scenes}) >= 8
    assert len({len(s.labels) for s in scenes}) >= 3
    assert len({s.image.reshape(-1, 3).mean(0).round().tobytes() for s in scenes}) == len(scenes)


def test_scene_labels_are_balanced() -> None:
    """Equal-area kinds make the largest object, whose class labels the scene, of any class alike."""
    generator = SceneGenerator(DOWNSTREAM_CLASSES, img_size=32)
    counts = np.bincount([generator.scene(i).label for i in range(600)], minlength=len(DOWNSTREAM_CLASSES))
    assert counts.min() > 0.06 * counts.sum() and counts.max() < 0.14 * counts.sum()


def test_options_are_validated() -> None:
    with pytest.raises(ValueError):
        SceneGenerator(["circle", "blob"])
    with pytest.raises(ValueError):
        SceneGenerator(DOWNSTREAM_CLASSES, min_objects=3, max_objects=2)
    with pytest.raises(KeyError):
        SceneGenerator(DOWNSTREAM_CLASSES, style="no_such_style")


def test_upstream_style_generates_upstream_classes() -> None:
    generator = SceneGenerator(UPSTREAM_CLASSES, img_size=SIZE, style="upstream")
    scene = generator.scene(0)
    assert scene.image.shape == (SIZE, SIZE, 3)
    assert 0 <= scene.label < len(UPSTREAM_CLASSES)


def test_splits_are_disjoint_consecutive_ranges(generator: SceneGenerator) -> None:
    splits = make_splits(SceneClassification, generator, {"train": 10, "val": 4, "test": 6})
    assert [len(v) for v in splits.values()] == [10, 4, 6]
    assert [v.indices for v in splits.values()] == [range(0, 10), range(10, 14), range(14, 20)]
    val_first, _ = splits["val"][0]
    assert torch.equal(val_first, SceneClassification(generator, 20)[10][0])
    with pytest.raises(IndexError):
        splits["val"][4]


def test_classification_view(generator: SceneGenerator) -> None:
    view = SceneClassification(generator, 3, offset=5)
    image, label = view[1]
    assert image.dtype == torch.float32 and image.shape == (3, SIZE, SIZE)
    assert image.min() >= 0 and image.max() <= 1
    scene = generator.scene(6)
    assert label == scene.label
    np.testing.assert_array_equal((image * 255).round().byte().permute(1, 2, 0).numpy(), scene.image)
    flipped = SceneClassification(generator, 3, offset=5, transform=lambda x: x.flip(-1))
    assert torch.equal(flipped[1][0], image.flip(-1))


def test_detection_view_is_torchvision_style(generator: SceneGenerator) -> None:
    image, target = SceneDetection(generator, 2)[0]
    scene = generator.scene(0)
    assert image.shape == (3, SIZE, SIZE)
    assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (len(scene.labels), 4)
    assert target["labels"].dtype == torch.int64
    assert torch.equal(target["labels"], torch.from_numpy(scene.labels) + 1)  # 0 is the background
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (len(scene.labels), SIZE, SIZE)


def test_segmentation_view(generator: SceneGenerator) -> None:
    image, semantic = SceneSegmentation(generator, 2)[1]
    assert image.shape == (3, SIZE, SIZE)
    assert semantic.dtype == torch.int64
    assert torch.equal(semantic, torch.from_numpy(generator.scene(1).semantic))
