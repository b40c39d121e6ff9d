"""VTAB-1k's loader on tiny fixtures written in NOAH's extracted layout (`get_vtab1k.py`):
`<task>/{train800,val200,train800val200,test}.txt`, lines `images/<split>/000123.jpg <label>`, and the
JPEGs they name under `<task>/images/<split>/`."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from peft_bench.config import DataConfig
from peft_bench.data.classification import CLASSIFICATION_DATASETS, build_classification_data
from peft_bench.data.suites import VTAB_1K, suite_of
from peft_bench.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from peft_bench.errors import UserError

SIZE = 12
LISTS = ("train800", "val200", "train800val200", "test")
# train800val200 is deliberately not train800 + val200 in length: the loader must read that list.
SMALL = {"train800": 3, "val200": 2, "train800val200": 4, "test": 2}

# The 19 tasks as the design notes tabulate them (NOAH's folder names), independent of suites.py.
EXPECTED = {
    "cifar": ("Natural", 100),
    "caltech101": ("Natural", 102),
    "dtd": ("Natural", 47),
    "oxford_flowers102": ("Natural", 102),
    "oxford_iiit_pet": ("Natural", 37),
    "svhn": ("Natural", 10),
    "sun397": ("Natural", 397),
    "patch_camelyon": ("Specialized", 2),
    "eurosat": ("Specialized", 10),
    "resisc45": ("Specialized", 45),
    "diabetic_retinopathy": ("Specialized", 5),
    "clevr_count": ("Structured", 8),
    "clevr_dist": ("Structured", 6),
    "dmlab": ("Structured", 6),
    "kitti": ("Structured", 4),
    "dsprites_loc": ("Structured", 16),
    "dsprites_ori": ("Structured", 16),
    "smallnorb_azi": ("Structured", 18),
    "smallnorb_ele": ("Structured", 9),
}


def write_task(
    root: Path, folder: str, classes: int, sizes: dict[str, int] = SMALL, seed: int = 0
) -> dict[str, list[int]]:
    """A task folder as NOAH's extractor writes it (random 16x12 JPEGs); the labels of each list.
    The last image of each list has the top label, classes - 1."""
    rng = np.random.default_rng(seed)
    labels = {}
    for split in LISTS:
        lines, labels[split] = [], []
        for i in range(sizes[split]):
            name = f"images/{split}/{i:06d}.jpg"
            (root / folder / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(root / folder / name)
            label = classes - 1 if i == sizes[split] - 1 else i % classes
            lines.append(f"{name} {label}")
            labels[split].append(label)
        (root / folder / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return labels


def build(name: str, root: Path, **overrides: object):
    cfg = DataConfig(name=name, root=str(root), **overrides)
    return build_classification_data(cfg, img_size=SIZE, seed=0)


@pytest.mark.parametrize("folder", list(EXPECTED))
def test_every_task_loads_with_its_class_count_and_group(tmp_path: Path, folder: str) -> None:
    group, classes = EXPECTED[folder]
    name = f"vtab_{folder}"
    assert name in CLASSIFICATION_DATASETS
    task = VTAB_1K.task(name)
    assert (task.group, task.num_classes, task.folder) == (group, classes, folder)
    assert suite_of(name) is VTAB_1K
    labels = write_task(tmp_path, folder, classes)
    data = build(name, tmp_path)
    assert data.num_classes == len(data.class_names) == classes
    for split, listed in (("train", "train800"), ("val", "val200"), ("test", "test")):
        dataset = getattr(data, split)
        assert dataset.labels == labels[listed]
        image, label = dataset[len(dataset) - 1]
        assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32
        assert label == classes - 1


def test_all_nineteen_tasks_are_registered() -> None:
    assert {t.name for t in VTAB_1K.tasks} == {f"vtab_{f}" for f in EXPECTED}
    assert len(VTAB_1K.tasks) == 19 and VTAB_1K.groups == ("Natural", "Specialized", "Structured")


@pytest.mark.parametrize(
    ("selection", "sizes", "described"),
    [
        ("val", (3, 2, 2), "val: val200.txt of VTAB-1k CIFAR-100 (trained on train800.txt)"),
        ("none", (4, None, 2), "none (no model selection): trained on train800val200.txt of VTAB-1k"),
        ("test", (4, 2, 2), "test: the best checkpoint on the test split (optimistic); trained on "),
    ],
)
def test_split_sizes_per_selection_are_the_list_lengths(
    tmp_path: Path, selection: str, sizes: tuple, described: str
) -> None:
    write_task(tmp_path, "cifar", 100)
    data = build("vtab_cifar", tmp_path, selection_split=selection)
    assert (len(data.train), None if data.val is None else len(data.val), len(data.test)) == sizes
    assert data.selection.startswith(described)
    if selection == "test":
        assert data.val is data.test
        assert "train800val200.txt" in data.selection


def test_an_alias_folder_is_found_and_the_canonical_name_wins(tmp_path: Path) -> None:
    write_task(tmp_path, "cifar100", 100)  # NOAH's and V-PETL's scripts name it so
    assert len(build("vtab_cifar", tmp_path).train) == 3
    write_task(tmp_path, "cifar", 100, sizes={**SMALL, "train800": 5})
    assert len(build("vtab_cifar", tmp_path).train) == 5
    write_task(tmp_path, "oxford_pet", 37)  # NOAH's name for oxford_iiit_pet
    assert build("vtab_oxford_iiit_pet", tmp_path).num_classes == 37


def test_a_missing_task_folder_lists_every_name_tried(tmp_path: Path) -> None:
    with pytest.raises(UserError) as error:
        build("vtab_cifar", tmp_path)
    message = str(error.value)
    assert f"under data.root={tmp_path} (tried cifar, cifar100, cifar-100)" in message
    assert "Expected layout: <data.root>/cifar/" in message and "train800val200.txt" in message
    assert "get_vtab1k.py" in message and "set data.root=" in message


def test_data_root_at_the_task_folder_itself_says_to_go_one_up(tmp_path: Path) -> None:
    write_task(tmp_path, "cifar", 100)
    with pytest.raises(UserError, match=r"itself holds the task's files, but data\.root is the folder above"):
        build("vtab_cifar", tmp_path / "cifar")


def test_a_missing_list_names_it_and_the_four_expected_files(tmp_path: Path) -> None:
    write_task(tmp_path, "dtd", 47)
    (tmp_path / "dtd" / "val200.txt").unlink()
    (tmp_path / "dtd" / "test.txt").unlink()
    with pytest.raises(UserError) as error:
        build("vtab_dtd", tmp_path)
    message = str(error.value)
    assert f"The VTAB-1k task folder {tmp_path / 'dtd'} was found but lacks val200.txt, test.txt." in message
    assert "train800val200.txt" in message and "Extract the task again" in message


def test_a_label_out_of_range_names_the_file_and_line(tmp_path: Path) -> None:
    write_task(tmp_path, "kitti", 4)
    listing = tmp_path / "kitti" / "train800.txt"
    lines = listing.read_text().splitlines()
    lines[1] = "images/train800/000001.jpg 4"  # KITTI-Dist has 4 classes, 0..3
    listing.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        UserError, match=rf"Line 2 of {re.escape(str(listing))} has the label 4, outside 0\.\.3"
    ):
        build("vtab_kitti", tmp_path)


@pytest.mark.parametrize("line", ["images/train800/000000.jpg", "images/train800/000000.jpg three"])
def test_a_malformed_line_names_the_file_and_line(tmp_path: Path, line: str) -> None:
    write_task(tmp_path, "svhn", 10)
    listing = tmp_path / "svhn" / "train800.txt"
    listing.write_text(listing.read_text() + "\n" + line + "\n")  # a blank line 4 is skipped
    with pytest.raises(
        UserError, match=rf"Line 5 of {re.escape(str(listing))} reads .*'<image path> <integer label>'"
    ):
        build("vtab_svhn", tmp_path)


def test_a_missing_image_names_the_list_and_line(tmp_path: Path) -> None:
    write_task(tmp_path, "eurosat", 10)
    (tmp_path / "eurosat" / "images" / "test" / "000001.jpg").unlink()
    data = build("vtab_eurosat", tmp_path)  # only the first image of each list is checked at load
    with pytest.raises(UserError, match=r"000001\.jpg, named on line 2 of .*test\.txt, does not exist"):
        data.test[1]
    (tmp_path / "eurosat" / "images" / "test" / "000000.jpg").unlink()
    with pytest.raises(UserError, match=r"000000\.jpg, named on line 1 of .*test\.txt, does not exist"):
        build("vtab_eurosat", tmp_path)


def test_loading_reads_the_lists_not_the_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_task(tmp_path, "dmlab", 6)

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("an image was opened at load")

    monkeypatch.setattr(Image, "open", no_decoding)
    data = build("vtab_dmlab", tmp_path)
    assert len(data.train) == 3


def _direct_resize(path: Path) -> np.ndarray:
    """PIL's bicubic resize to SIZE x SIZE, as (3, S, S) floats in [0, 1]: the reference for the loader."""
    with Image.open(path) as image:
        resized = image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    return np.asarray(resized, dtype=np.float64).transpose(2, 0, 1) / 255


@pytest.mark.parametrize(
    ("normalization", "mean", "std"),
    [
        ("imagenet", IMAGENET_MEAN, IMAGENET_STD),
        ("inception", (0.5,) * 3, (0.5,) * 3),
        ("none", (0,) * 3, (1,) * 3),
    ],
)
def test_every_split_is_a_bicubic_direct_resize_then_normalised(
    tmp_path: Path, normalization: str, mean: tuple, std: tuple
) -> None:
    write_task(tmp_path, "resisc45", 45)
    data = build("vtab_resisc45", tmp_path, normalization=normalization)
    for dataset, split in ((data.train, "train800"), (data.val, "val200"), (data.test, "test")):
        expected = (
            _direct_resize(tmp_path / "resisc45" / "images" / split / "000000.jpg")
            - np.array(mean)[:, None, None]
        ) / np.array(std)[:, None, None]
        first, again = dataset[0][0], dataset[0][0]
        assert torch.equal(first, again)  # no augmentation, in training either
        np.testing.assert_allclose(first.numpy(), expected, atol=1e-5)
    if normalization == "none":
        values = torch.stack([data.train[i][0] for i in range(len(data.train))])
        assert values.min() >= 0 and values.max() <= 1
