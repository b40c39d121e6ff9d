"""Classification loaders on tiny fixtures written in the real on-disk formats of each dataset.

Every fixture image is a solid grey whose level encodes its fixture id, so that the id survives
crops, flips and resizes: decoding it from a sample checks which file a split serves and which
label goes with it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from peft_bench.builder import build_data
from peft_bench.config import Config, DataConfig
from peft_bench.data import classification
from peft_bench.data.classification import (
    CLASSIFICATION_DATASETS,
    VOC_CLASSES,
    TaskData,
    build_classification_data,
    stratified_holdout,
)
from peft_bench.data.transforms import IMAGENET_MEAN, IMAGENET_STD, classification_transforms
from peft_bench.errors import UserError

IMG_SIZE = 16


def _write_image(path: Path, image_id: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 16), (10 + 10 * image_id,) * 3).save(path)


def _decode(dataset: torch.utils.data.Dataset) -> dict[int, int]:
    """Fixture id -> label of every sample, checking each image tensor on the way."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    decoded = {}
    for index in range(len(dataset)):
        image, label = dataset[index]
        assert image.shape == (3, IMG_SIZE, IMG_SIZE) and image.dtype == torch.float32
        assert isinstance(label, int)
        grey = float((image * std + mean).mean()) * 255
        decoded[round((grey - 10) / 10)] = label
    assert len(decoded) == len(dataset), "a split serves the same image twice"
    return decoded


def _build(name: str, root: Path | None, seed: int = 0, **overrides: object) -> TaskData:
    cfg = DataConfig(name=name, root=None if root is None else str(root), val_fraction=0.25, **overrides)
    return build_classification_data(cfg, img_size=IMG_SIZE, seed=seed)


# ---------------------------------------------------------------------------------------------
# Flowers102: flowers-102/jpg/image_XXXXX.jpg, imagelabels.mat (`labels`), setid.mat (1-based ids).

FLOWERS_SPLITS = {"trnid": [1, 2, 3, 4, 5, 6], "valid": [7, 8, 9], "tstid": [10, 11, 12]}


def _flowers_label(image_id: int) -> int:
    return (image_id - 1) % 3  # 0-based; the .mat file holds it 1-based


@pytest.fixture
def flowers_root(tmp_path: Path) -> Path:
    base = tmp_path / "flowers-102"
    for image_id in range(1, 13):
        _write_image(base / "jpg" / f"image_{image_id:05d}.jpg", image_id)
    labels = np.array([[_flowers_label(i) + 1 for i in range(1, 13)]], dtype=np.uint8)
    scipy.io.savemat(base / "imagelabels.mat", {"labels": labels})
    scipy.io.savemat(
        base / "setid.mat", {k: np.array([v], dtype=np.uint16) for k, v in FLOWERS_SPLITS.items()}
    )
    return tmp_path


def test_flowers102_official_splits(flowers_root: Path) -> None:
    data = _build("flowers102", flowers_root)
    for split, key in (("train", "trnid"), ("val", "valid"), ("test", "tstid")):
        assert _decode(getattr(data, split)) == {i: _flowers_label(i) for i in FLOWERS_SPLITS[key]}
    assert data.num_classes == len(data.class_names) == 102
    assert data.class_names[0] == "pink primrose"
    assert data.selection == "val: the official Flowers102 val split"


def test_flowers102_selecting_on_test(flowers_root: Path) -> None:
    data = _build("flowers102", flowers_root, selection_split="test")
    assert data.val is data.test
    assert set(_decode(data.train)) == set(FLOWERS_SPLITS["trnid"])
    assert data.selection.startswith("test: the best checkpoint on the test split")


def test_flowers102_under_the_papers_protocol_trains_on_train_and_val(flowers_root: Path) -> None:
    data = _build("flowers102", flowers_root, selection_split="none")
    assert data.val is None
    assert set(_decode(data.train)) == set(FLOWERS_SPLITS["trnid"]) | set(FLOWERS_SPLITS["valid"])
    assert data.selection.startswith("none (no model selection)")


def test_torchvision_not_found_becomes_user_error(
    flowers_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(classification._Flowers102, "_check_integrity", lambda self: False)
    with pytest.raises(UserError, match=r"torchvision could not load it .*Dataset not found"):
        _build("flowers102", flowers_root)


# ---------------------------------------------------------------------------------------------
# Oxford-IIIT Pet: oxford-iiit-pet/images/<Breed>_<n>.jpg, annotations/{trainval,test}.txt with
# lines "<Breed>_<n> <class id> <species> <breed id>" (1-based; species 1 = cat, 2 = dog).

PETS_BREEDS = (("Abyssinian", 1, 1), ("american_bulldog", 2, 1), ("Bengal", 1, 2))  # breed, species, id


@pytest.fixture
def pets(tmp_path: Path) -> tuple[Path, dict[str, dict[int, int]]]:
    """The root and, per split, fixture id -> 0-based label."""
    base = tmp_path / "oxford-iiit-pet"
    truth: dict[str, dict[int, int]] = {"trainval": {}, "test": {}}
    lines: dict[str, list[str]] = {"trainval": [], "test": []}
    image_id = 0
    for label, (breed, species, breed_id) in enumerate(PETS_BREEDS):
        for n in range(1, 7):
            split = "trainval" if n <= 4 else "test"
            _write_image(base / "images" / f"{breed}_{n}.jpg", image_id)
            lines[split].append(f"{breed}_{n} {label + 1} {species} {breed_id}")
            truth[split][image_id] = label
            image_id += 1
    for split, split_lines in lines.items():
        (base / "annotations").mkdir(parents=True, exist_ok=True)
        (base / "annotations" / f"{split}.txt").write_text("\n".join(split_lines) + "\n")
    return tmp_path, truth


def test_pets_holds_out_a_stratified_val(pets: tuple[Path, dict[str, dict[int, int]]]) -> None:
    root, truth = pets
    data = _build("pets", root)
    train, val, test = _decode(data.train), _decode(data.val), _decode(data.test)
    assert (len(train), len(val), len(test)) == (9, 3, 6)
    assert train.keys().isdisjoint(val) and train | val == truth["trainval"]
    assert sorted(val.values()) == [0, 1, 2]  # one image of each class
    assert test == truth["test"]
    assert data.class_names == ["Abyssinian", "American Bulldog", "Bengal"]
    assert (
        data.selection
        == "val: 25% of the Oxford-IIIT Pet training split held out, stratified by class (seed 0)"
    )


def test_pets_holdout_is_a_function_of_the_seed(pets: tuple[Path, dict[str, dict[int, int]]]) -> None:
    root, _ = pets
    assert _build("pets", root).val.labels == _build("pets", root).val.labels
    val_ids = {frozenset(_decode(_build("pets", root, seed=seed).val)) for seed in range(6)}
    assert len(val_ids) > 1


def test_pets_selecting_on_test_keeps_all_of_trainval(pets: tuple[Path, dict[str, dict[int, int]]]) -> None:
    root, truth = pets
    data = _build("pets", root, selection_split="test")
    assert data.val is data.test
    assert _decode(data.train) == truth["trainval"]
    paper = _build("pets", root, selection_split="none")
    assert paper.val is None and _decode(paper.train) == truth["trainval"]


# ---------------------------------------------------------------------------------------------
# VOC2007: VOCdevkit/VOC2007/{JPEGImages/<id>.jpg, Annotations/<id>.xml, ImageSets/Main/<split>.txt}.

# id: (split, [(class, difficult, (xmin, ymin, xmax, ymax))], expected label)
VOC_IMAGES = {
    1: ("train", [("cat", 0, (1, 1, 10, 10))], "cat"),
    2: ("train", [("dog", 0, (1, 1, 5, 5)), ("person", 0, (1, 1, 20, 16))], "person"),
    3: ("train", [("bird", 1, (1, 1, 20, 16)), ("boat", 0, (1, 1, 8, 8))], "boat"),  # largest is difficult
    4: ("val", [("car", 1, (1, 1, 5, 5)), ("bus", 1, (1, 1, 9, 9))], "bus"),  # all difficult: largest
    5: ("val", [("aeroplane", 0, (2, 2, 6, 6)), ("bicycle", 0, (1, 1, 5, 5))], "aeroplane"),  # tie: first
    6: ("test", [("cat", 0, (3, 3, 9, 9))], "cat"),
    7: ("test", [("horse", 0, (1, 1, 4, 4)), ("sheep", 0, (1, 1, 6, 4))], "sheep"),
}


def _voc_xml(image_id: int, objects: list[tuple[str, int, tuple[int, ...]]]) -> str:
    parts = []
    for name, difficult, box in objects:
        coords = "".join(
            f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True)
        )
        head = "<part><name>head</name><bndbox>" + coords + "</bndbox></part>" if name == "person" else ""
        parts.append(
            f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
            f"<difficult>{difficult}</difficult><bndbox>{coords}</bndbox>{head}</object>"
        )
    return (
        f"<annotation><folder>VOC2007</folder><filename>{image_id:06d}.jpg</filename>"
        "<size><width>20</width><height>16</height><depth>3</depth></size><segmented>0</segmented>"
        + "".join(parts)
        + "</annotation>"
    )


def _write_voc(root: Path) -> None:
    base = root / "VOCdevkit" / "VOC2007"
    (base / "Annotations").mkdir(parents=True)
    (base / "ImageSets" / "Main").mkdir(parents=True)
    for image_id, (_, objects, _) in VOC_IMAGES.items():
        _write_image(base / "JPEGImages" / f"{image_id:06d}.jpg", image_id)
        (base / "Annotations" / f"{image_id:06d}.xml").write_text(_voc_xml(image_id, objects))
    for split in ("train", "val", "test"):
        ids = [f"{i:06d}" for i, (s, _, _) in VOC_IMAGES.items() if s == split]
        (base / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")


def _voc_truth(split: str) -> dict[int, int]:
    return {i: VOC_CLASSES.index(label) for i, (s, _, label) in VOC_IMAGES.items() if s == split}


@pytest.mark.parametrize("below_root", ["", "VOCdevkit", "VOCdevkit/VOC2007"])
def test_voc2007_single_label_protocol(tmp_path: Path, below_root: str) -> None:
    _write_voc(tmp_path)
    data = _build("voc2007", tmp_path / below_root)
    for split in ("train", "val", "test"):
        assert _decode(getattr(data, split)) == _voc_truth(split)
    assert data.class_names == list(VOC_CLASSES) and data.num_classes == 20
    assert data.selection == "val: the official VOC2007 val list"


def test_voc2007_download_fetches_trainval_and_test(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fetched = []

    def fake_voc_detection(root: Path, year: str, image_set: str, download: bool) -> None:
        fetched.append((year, image_set, download))
        if image_set == "test":
            _write_voc(Path(root))

    monkeypatch.setattr(classification, "VOCDetection", fake_voc_detection)
    data = _build("voc2007", tmp_path, download=True)
    assert fetched == [("2007", "trainval", True), ("2007", "test", True)]
    assert len(data.test) == 2


# ---------------------------------------------------------------------------------------------
# Image folder: <root>/{train,val,test}/<class>/<image>.


def _write_folder(
    root: Path, counts: dict[str, int], classes: tuple[str, ...] = ("cat", "dog", "fox")
) -> dict:
    """Write counts[split] images per class; return split -> fixture id -> label."""
    truth: dict[str, dict[int, int]] = {}
    image_id = 0
    for split, count in counts.items():
        truth[split] = {}
        for label, name in enumerate(classes):
            for _ in range(count):
                _write_image(root / split / name / f"{image_id}.png", image_id)
                truth[split][image_id] = label
                image_id += 1
    return truth


def test_imagefolder_with_a_val_folder(tmp_path: Path) -> None:
    truth = _write_folder(tmp_path, {"train": 3, "val": 1, "test": 2})
    data = _build("imagefolder", tmp_path)
    assert {split: _decode(getattr(data, split)) for split in truth} == truth
    assert data.class_names == ["cat", "dog", "fox"]
    assert data.selection == f"val: the folder {tmp_path / 'val'}"


def test_imagefolder_without_val_holds_out_part_of_train(tmp_path: Path) -> None:
    truth = _write_folder(tmp_path, {"train": 4, "test": 2})
    data = _build("imagefolder", tmp_path)
    train, val = _decode(data.train), _decode(data.val)
    assert train.keys().isdisjoint(val) and train | val == truth["train"]
    assert Counter(val.values()) == {0: 1, 1: 1, 2: 1}
    assert _decode(data.test) == truth["test"]


def test_imagefolder_splits_must_share_their_classes(tmp_path: Path) -> None:
    _write_folder(tmp_path, {"train": 1})
    _write_folder(tmp_path, {"test": 1}, classes=("cat", "dog", "owl"))
    with pytest.raises(UserError, match="fox, owl"):
        _build("imagefolder", tmp_path)


# ---------------------------------------------------------------------------------------------
# sklearn digits: shipped with sklearn, split 60/20/20 by class.


def test_digits_fixed_stratified_split() -> None:
    data = _build("digits", None)
    sizes = [len(data.train), len(data.val), len(data.test)]
    assert sum(sizes) == 1797 and all(
        abs(s - f * 1797) < 10 for s, f in zip(sizes, (0.6, 0.2, 0.2), strict=True)
    )
    for split in (data.val, data.test):
        assert all(abs(n - 36) <= 2 for n in Counter(split.labels).values()) and len(set(split.labels)) == 10
    image, label = data.train[0]
    assert image.shape == (3, IMG_SIZE, IMG_SIZE) and image.dtype == torch.float32
    assert label == data.train.labels[0]
    assert torch.equal(image, data.train[0][0])  # no random crop or flip
    again = _build("digits", None)
    assert torch.equal(again.test[5][0], data.test[5][0]) and again.test.labels == data.test.labels
    assert not torch.equal(_build("digits", None, seed=1).test[5][0], data.test[5][0])


# ---------------------------------------------------------------------------------------------
# Shared pieces and errors.


def test_stratified_holdout() -> None:
    labels = [0] * 10 + [1] * 20 + [2] * 5 + [3]
    kept, held = stratified_holdout(labels, 0.2, seed=3)
    assert Counter(labels[i] for i in held) == {0: 2, 1: 4, 2: 1}  # the single class 3 stays in train
    assert sorted(kept + held) == list(range(len(labels)))
    assert stratified_holdout(labels, 0.2, seed=3) == (kept, held)
    with pytest.raises(UserError, match="val_fraction"):
        stratified_holdout(labels, 1.0, seed=0)


def test_transforms_give_the_requested_size() -> None:
    image = Image.new("RGB", (20, 16), (200, 100, 50))
    for train in (True, False):
        assert classification_transforms(IMG_SIZE, train=train)(image).shape == (3, IMG_SIZE, IMG_SIZE)


@pytest.mark.parametrize(
    ("name", "missing", "layout_hint", "downloadable"),
    [
        ("flowers102", "flowers-102/jpg", "imagelabels.mat", True),
        ("pets", "oxford-iiit-pet/images", "annotations/trainval.txt", True),
        ("voc2007", "VOCdevkit/VOC2007/JPEGImages", "ImageSets/Main/train.txt", True),
        ("imagefolder", "train", "<data.root>/train/<class>/", False),
    ],
)
def test_missing_data_names_the_path_and_the_layout(
    tmp_path: Path, name: str, missing: str, layout_hint: str, downloadable: bool
) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(UserError) as error:
        _build(name, root)
    message = str(error.value)
    assert str(root / missing) in message and layout_hint in message and "data.root=" in message
    assert ("data.download=true" in message) == downloadable
    assert "\n\n" not in message


def test_unset_root_and_unknown_names_are_user_errors() -> None:
    with pytest.raises(UserError, match=r"data\.root is not set"):
        _build("pets", None)
    with pytest.raises(UserError) as error:
        build_data(Config(data=DataConfig(name="cifar", task="classification")))
    assert all(name in str(error.value) for name in CLASSIFICATION_DATASETS)
    assert "dataset=<name>" in str(error.value)
    with pytest.raises(UserError, match="selection_split"):
        _build("digits", None, selection_split="train")


def test_the_papers_datasets_resize_as_mmcls_without_antialiasing() -> None:
    """mmcls resizes with cv2's bilinear, which samples the image without antialiasing: on a 2-pixel
    checkerboard shrunk 64 -> 18 px it keeps a pattern that PIL's antialiased resize averages away."""
    board = ((np.indices((64, 64)).sum(0) // 2) % 2 * 255).astype(np.uint8)
    image = Image.fromarray(np.stack([board] * 3, axis=-1))
    ours = classification_transforms(16, train=False, antialias=False)(image)
    pixels = torch.from_numpy(np.asarray(image)).permute(2, 0, 1)[None].float()
    sampled = torch.nn.functional.interpolate(pixels, size=(18, 18), mode="bilinear", align_corners=False)
    centre = sampled.round().clamp(0, 255)[0, :, 1:17, 1:17] / 255
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    assert torch.allclose(ours, (centre - mean) / std, atol=1e-5)
    antialiased = classification_transforms(16, train=False)(image)
    assert (ours * std).std() > 2 * (antialiased * std).std()  # the pattern survives without antialiasing
    states = []
    for antialias in (False, True):  # the same random crop and flip: the same draws either way
        torch.manual_seed(0)
        assert classification_transforms(16, train=True, antialias=antialias)(image).shape == (3, 16, 16)
        states.append(torch.get_rng_state())
    assert torch.equal(*states)
