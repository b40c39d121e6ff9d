"""FGVC's loader on tiny fixtures in the layout VPT reads (`KMnP/vpt`, `src/data/datasets/json_dataset.py`):
`<set>/{train,val,test}.json`, each mapping an image path to a class id, the paths relative to the set's
image folder (`images/` for CUB and NABirds, `Images/` for Stanford Dogs, the set's folder itself for
Oxford Flowers and Stanford Cars)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from peft_bench.config import DataConfig
from peft_bench.data.classification import CLASSIFICATION_DATASETS, build_classification_data
from peft_bench.data.suites import FGVC, SUITES, suite_of
from peft_bench.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from peft_bench.errors import UserError

SIZE = 16

# Per set, independent of the loader: its folder (VPT's folder names as V-PETL lays them out), class
# count (VPT's configs/finetune/*.yaml), image folder (VPT's get_imagedir) and class ids as the json
# holds them (CUB's are strings; NABirds' are sparse).
SETS = {
    "fgvc_cub": ("CUB_200_2011", 200, "images", ["200", "001", "017"]),
    "fgvc_nabirds": ("nabirds", 555, "images", [1010, 295, 627]),
    "fgvc_flowers": ("OxfordFlower", 102, "", [102, 1, 5]),
    "fgvc_dogs": ("StanfordDogs", 120, "Images", [120, 1, 7]),
    "fgvc_cars": ("StanfordCars", 196, "", [196, 1, 30]),
}
COUNTS = {"train": 3, "val": 2, "test": 2}


def write_set(root: Path, name: str, folder: str | None = None, counts: dict[str, int] = COUNTS) -> Path:
    """A set's folder with VPT's three json files; image i of a split has the class id ids[i % 3]."""
    default, _, images, ids = SETS[name]
    base = root / (folder or default)
    image_root = base / images if images else base
    rng = np.random.default_rng(0)
    for split, count in counts.items():
        entries = {}
        for i in range(count):
            relative = f"class_{i % 3}/{split}_{i}.jpg"
            (image_root / relative).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)).save(image_root / relative)
            entries[relative] = ids[i % 3]
        (base / f"{split}.json").write_text(json.dumps(entries))
    return base


def build(name: str, root: Path, **overrides: object):
    return build_classification_data(DataConfig(name=name, root=str(root), **overrides), SIZE, seed=0)


@pytest.mark.parametrize("name", list(SETS))
def test_every_set_loads_from_its_image_folder_with_its_class_count(tmp_path: Path, name: str) -> None:
    folder, classes, _, ids = SETS[name]
    assert name in CLASSIFICATION_DATASETS and suite_of(name) is FGVC is SUITES["fgvc"]
    task = FGVC.task(name)
    assert (task.group, task.num_classes, task.folder) == ("", classes, folder)
    write_set(tmp_path, name)
    data = build(name, tmp_path)
    assert data.num_classes == len(data.class_names) == classes
    # Contiguous labels by the sorted class ids, as VPT maps them.
    label = {class_id: i for i, class_id in enumerate(sorted(ids))}
    assert data.train.labels == [label[ids[0]], label[ids[1]], label[ids[2]]]
    assert data.val.labels == data.test.labels == [label[ids[0]], label[ids[1]]]
    assert data.class_names[:3] == [str(c) for c in sorted(ids)]
    for dataset in (data.train, data.val, data.test):
        image, target = dataset[0]
        assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32
        assert target == label[ids[0]]


def test_cub_ids_sort_as_strings_and_nabirds_ids_as_integers(tmp_path: Path) -> None:
    write_set(tmp_path, "fgvc_cub")
    assert build("fgvc_cub", tmp_path).class_names[:3] == ["001", "017", "200"]
    write_set(tmp_path, "fgvc_nabirds")
    assert build("fgvc_nabirds", tmp_path).class_names[:3] == ["295", "627", "1010"]


def test_a_class_missing_from_val_keeps_the_labels_of_train(tmp_path: Path) -> None:
    """NABirds' val names 553 of 555 classes: one map over the three files keeps val's labels right
    (VPT's map per file would shift val's labels past the missing id)."""
    base = write_set(tmp_path, "fgvc_nabirds")
    val = json.loads((base / "val.json").read_text())
    (base / "val.json").write_text(json.dumps({k: v for k, v in val.items() if v != 295}))
    data = build("fgvc_nabirds", tmp_path)
    assert data.val.labels == [2]  # 1010 is label 2 in train and test as well
    assert sorted(data.train.labels) == [0, 1, 2]


@pytest.mark.parametrize(
    ("selection", "sizes", "described"),
    [
        ("val", (3, 2, 2), "val: val.json of FGVC Stanford Dogs (VPT's split; trained on train.json)"),
        ("none", (5, None, 2), "none (no model selection): trained on train.json + val.json of FGVC"),
        (
            "test",
            (5, 2, 2),
            "test: the best checkpoint on the test split (optimistic); trained on train.json",
        ),
    ],
)
def test_split_sizes_per_selection(tmp_path: Path, selection: str, sizes: tuple, described: str) -> None:
    write_set(tmp_path, "fgvc_dogs")
    data = build("fgvc_dogs", tmp_path, selection_split=selection)
    assert (len(data.train), None if data.val is None else len(data.val), len(data.test)) == sizes
    assert data.selection.startswith(described)
    if selection == "test":
        assert data.val is data.test


def test_an_alias_folder_is_found(tmp_path: Path) -> None:
    write_set(tmp_path, "fgvc_cub", folder="CUB")  # VPT's DATA.NAME
    write_set(tmp_path, "fgvc_flowers", folder="oxfordflowers")  # GIFT's folder
    assert build("fgvc_cub", tmp_path).num_classes == 200
    assert build("fgvc_flowers", tmp_path).num_classes == 102


def test_a_missing_set_folder_lists_every_name_tried(tmp_path: Path) -> None:
    with pytest.raises(UserError) as error:
        build("fgvc_cars", tmp_path)
    message = str(error.value)
    assert f"under data.root={tmp_path} (tried StanfordCars, stanfordcars)" in message
    assert "Expected layout: <data.root>/StanfordCars/" in message and "car_ims/000001.jpg" in message


def test_a_missing_json_or_image_folder_is_named_with_the_expected_files(tmp_path: Path) -> None:
    base = write_set(tmp_path, "fgvc_cub")
    (base / "val.json").unlink()
    with pytest.raises(UserError) as error:
        build("fgvc_cub", tmp_path)
    assert f"The FGVC task folder {base} was found but lacks val.json. Expected layout:" in str(error.value)
    base = write_set(tmp_path, "fgvc_dogs")
    (base / "Images").rename(base / "images")
    with pytest.raises(UserError, match=r"lacks Images\. Expected layout: .*relative to Images/"):
        build("fgvc_dogs", tmp_path)


def test_too_many_classes_or_mixed_ids_fail(tmp_path: Path) -> None:
    base = write_set(tmp_path, "fgvc_flowers")
    (base / "test.json").write_text(json.dumps({f"x_{i}.jpg": i for i in range(103)}))
    with pytest.raises(UserError, match=r"name 103 classes, but FGVC's Oxford Flowers has 102"):
        build("fgvc_flowers", tmp_path)
    (base / "test.json").write_text(json.dumps({"class_0/test_0.jpg": "102"}))
    with pytest.raises(UserError, match="mix integer and string class ids"):
        build("fgvc_flowers", tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "holds list .* not a json object mapping each image path to its class id"),
        ('{"a.jpg": 1.5}', r"gives the image 'a\.jpg' the class id 1\.5"),
    ],
)
def test_a_malformed_json_names_the_file(tmp_path: Path, content: str, message: str) -> None:
    base = write_set(tmp_path, "fgvc_cars")
    (base / "train.json").write_text(content)
    with pytest.raises(UserError, match=re.escape(str(base / "train.json")) + ".*" + message):
        build("fgvc_cars", tmp_path)


def test_a_missing_image_names_the_json_and_key(tmp_path: Path) -> None:
    base = write_set(tmp_path, "fgvc_cub")
    (base / "images" / "class_1" / "test_1.jpg").unlink()
    data = build("fgvc_cub", tmp_path)
    with pytest.raises(UserError, match=r"test_1\.jpg, named on .*test\.json \(key 'class_1/test_1\.jpg'\)"):
        data.test[1]


def test_eval_is_a_resize_and_centre_crop_and_train_augments(tmp_path: Path) -> None:
    base = write_set(tmp_path, "fgvc_dogs")
    data = build("fgvc_dogs", tmp_path)
    # A 20x16 image: the short side to round(16 / 0.875) = 18 (bilinear), the long to 22; the centre 16x16.
    with Image.open(base / "Images" / "class_0" / "test_0.jpg") as image:
        crop = image.convert("RGB").resize((22, 18), Image.Resampling.BILINEAR).crop((3, 1, 19, 17))
    pixels = np.asarray(crop, dtype=np.float64).transpose(2, 0, 1) / 255
    expected = (pixels - np.array(IMAGENET_MEAN)[:, None, None]) / np.array(IMAGENET_STD)[:, None, None]
    np.testing.assert_allclose(data.test[0][0].numpy(), expected, atol=1e-5)
    torch.manual_seed(0)
    assert not all(torch.equal(data.train[0][0], data.train[0][0]) for _ in range(3))


def test_normalization_none_gives_values_in_the_unit_range(tmp_path: Path) -> None:
    write_set(tmp_path, "fgvc_cars")
    data = build("fgvc_cars", tmp_path, normalization="none")
    values = torch.stack([dataset[i][0] for dataset in (data.train, data.test) for i in range(len(dataset))])
    assert values.min() >= 0 and values.max() <= 1 and values.max() > 0.5
