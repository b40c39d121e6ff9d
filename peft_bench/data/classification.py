"""Classification datasets: Flowers102, Oxford-IIIT Pet, VOC2007, an image folder and sklearn digits;
the registry also holds VTAB-1k's tasks (`vtab`), FGVC's sets (`fgvc`) and the embedded VTAB.

Each builder returns train / val / test datasets of `(image tensor (3, S, S), int label)`; val selects
the model. With `data.selection_split=val` (the harness's protocol), val is an official val split or
a stratified hold-out of the training split, and never touches test data. With `none` (the paper's
protocol) there is no val split: the model trains on everything but the test list (the official
train and val splits together, which the reference's unpublished `train2mmcls.txt` lists stand for)
and the last checkpoint is reported. With `test`, val *is* the test split and train is the official
training split.

VOC2007 single-label protocol. The paper reports top-1 / top-5 accuracy on VOC2007 classification, so
each image needs exactly one label: the class of its largest non-difficult object, by box area in
pixels, (xmax - xmin + 1) * (ymax - ymin + 1) since VOC boxes name their first and last pixel; if
every object of the image is difficult, the largest object. A tie goes to the object listed first.
The 20 classes keep the standard VOC order (`VOC_CLASSES`) and the splits are the official lists
ImageSets/Main/{train,val,test}.txt.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import Flowers102, ImageFolder, OxfordIIITPet, VOCDetection

from peft_bench.config import DataConfig, Selection
from peft_bench.data.base import TaskData
from peft_bench.data.embedded import build_scene_classification
from peft_bench.data.fgvc import FGVC_DATASETS
from peft_bench.data.layout import Layout, data_root, first_missing, require, torchvision_not_found
from peft_bench.data.scenes import DOWNSTREAM_CLASSES, UPSTREAM_CLASSES
from peft_bench.data.sources import Split, Transformed
from peft_bench.data.splits import selection_of, stratified_holdout, without_holdout
from peft_bench.data.transforms import classification_transforms, resize_transforms
from peft_bench.data.vtab import VTAB_DATASETS
from peft_bench.data.vtab_mini import VTAB_MINI_DATASETS
from peft_bench.errors import UserError

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip


Builder = Callable[[DataConfig, int, int], TaskData]


def build_classification_data(cfg: DataConfig, img_size: int, seed: int) -> TaskData:
    """Build the dataset `cfg.name` (one of `CLASSIFICATION_DATASETS`, registered by the classification
    task); `seed` fixes every hold-out, so a run's splits are reproducible."""
    selection_of(cfg)
    return CLASSIFICATION_DATASETS[cfg.name](cfg, img_size, seed)


def voc_single_label(annotation: Path) -> int:
    """The label of one VOC image under the single-label protocol of the module docstring."""
    try:
        objects = ET.parse(annotation).getroot().findall("object")
    except (OSError, ET.ParseError) as error:
        raise UserError(f"Cannot read the VOC annotation {annotation}: {error}.") from error
    if not objects:
        raise UserError(f"The VOC annotation {annotation} has no <object>, so the image has no label.")
    candidates = [obj for obj in objects if not _is_difficult(obj)] or objects
    name = (max(candidates, key=_box_area).findtext("name") or "").strip()
    if name not in VOC_CLASSES:
        raise UserError(f"The VOC annotation {annotation} names {name!r}, which is not a VOC class.")
    return VOC_CLASSES.index(name)


_BOX_SIDES = ("xmin", "ymin", "xmax", "ymax")


def _is_difficult(obj: ET.Element) -> bool:
    return (obj.findtext("difficult") or "0").strip() == "1"


def _box_area(obj: ET.Element) -> float:
    xmin, ymin, xmax, ymax = (float(obj.findtext(f"bndbox/{side}") or 0) for side in _BOX_SIDES)
    return (xmax - xmin + 1) * (ymax - ymin + 1)


# ---------------------------------------------------------------------------------------------
# Raw splits (`peft_bench.data.sources`): a dataset's splits before selection and transforms.


@dataclass(frozen=True)
class _Source:
    """A dataset's raw splits, before model selection and transforms."""

    name: str  # as `selection` quotes it
    class_names: list[str]
    train: Split
    test: Split
    val: Split | None = None  # an official val split; None: hold out part of train
    val_origin: str = ""  # what `val` is, in words
    augment: bool = True  # False: resize only (images too small to crop)
    antialias: bool = True  # False: resize as mmcls's cv2 backend (the reference's datasets)


class _ImageFiles(Dataset):
    def __init__(self, paths: list[Path], labels: list[int]) -> None:
        self.paths = paths
        self.labels = labels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        with Image.open(self.paths[index]) as image:
            return image.convert("RGB"), self.labels[index]


class _GreyImages(Dataset):
    """Grey uint8 images in memory, served as RGB PIL images like the files of the other datasets."""

    def __init__(self, images: np.ndarray, labels: list[int]) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[index]).convert("RGB"), self.labels[index]


def _assemble(cfg: DataConfig, img_size: int, seed: int, source: _Source) -> TaskData:
    """Choose the selection split per `cfg.selection_split` and attach the transforms."""
    if source.augment:
        train_transform, eval_transform = (
            classification_transforms(img_size, train, cfg.normalization, source.antialias)
            for train in (True, False)
        )
    else:
        train_transform = eval_transform = resize_transforms(img_size, cfg.normalization)
    test = Transformed(source.test, eval_transform)
    selection = selection_of(cfg)
    if selection is Selection.val:
        train, val_split, described = _validation(source, cfg.val_fraction, seed)
        val = Transformed(val_split, eval_transform)
    else:
        whole = selection is Selection.none and source.val is not None  # all but the test list
        train = source.train + source.val if whole else source.train
        splits = "train and val splits" if whole else "training split"
        val, described = without_holdout(selection, test, f"the {source.name} {splits}")
    return TaskData(
        train=Transformed(train, train_transform),
        val=val,
        test=test,
        num_classes=len(source.class_names),
        class_names=source.class_names,
        selection=described,
    )


def _validation(source: _Source, fraction: float, seed: int) -> tuple[Split, Split, str]:
    """(train, val, selection) where val never touches test data: the official val, else a hold-out."""
    if source.val is not None:
        return source.train, source.val, f"val: {source.val_origin}"
    kept, held = stratified_holdout(source.train.labels, fraction, seed)
    selection = (
        f"val: {fraction:.0%} of the {source.name} training split held out, stratified by class (seed {seed})"
    )
    return source.train.subset(kept), source.train.subset(held), selection


# ---------------------------------------------------------------------------------------------
# Missing data: a fast check of the files each loader opens, and one paragraph on how to fix it.


FLOWERS102_LAYOUT = Layout(
    required=("flowers-102/jpg", "flowers-102/imagelabels.mat", "flowers-102/setid.mat"),
    tree="<data.root>/flowers-102/ holding jpg/image_00001.jpg ... image_08189.jpg, imagelabels.mat "
    "and setid.mat",
    downloadable=True,
)
PETS_LAYOUT = Layout(
    required=(
        "oxford-iiit-pet/images",
        "oxford-iiit-pet/annotations/trainval.txt",
        "oxford-iiit-pet/annotations/test.txt",
    ),
    tree="<data.root>/oxford-iiit-pet/ holding images/Abyssinian_1.jpg ..., annotations/trainval.txt, "
    "annotations/test.txt",
    downloadable=True,
)
VOC2007_LAYOUT = Layout(
    required=("JPEGImages", "Annotations", *(f"ImageSets/Main/{s}.txt" for s in ("train", "val", "test"))),
    tree="<data.root>/VOCdevkit/VOC2007/ (data.root may also be VOCdevkit/ or VOC2007/ itself) holding "
    "JPEGImages/000001.jpg ..., Annotations/000001.xml ..., ImageSets/Main/train.txt, val.txt and "
    "test.txt (the test list and images come in the separate VOCtest_06-Nov-2007.tar)",
    downloadable=True,
)
IMAGEFOLDER_LAYOUT = Layout(
    required=("train", "test"),
    tree="<data.root>/train/<class>/<image>.jpg ..., <data.root>/test/<class>/... and optionally "
    "<data.root>/val/<class>/... (without val, data.val_fraction of train is held out)",
    downloadable=False,
)


# ---------------------------------------------------------------------------------------------
# The builders.


class _Flowers102(Flowers102):
    """torchvision's Flowers102, checking that its files exist rather than their md5.

    The md5 check rejects any re-saved copy of the two .mat files (a mirror, a test fixture) as
    "not found or corrupted"; a truncated file still fails when scipy reads it.
    """

    def _check_integrity(self) -> bool:
        return first_missing(Path(self.root), FLOWERS102_LAYOUT) is None


def _torchvision_split(dataset: Flowers102 | OxfordIIITPet) -> Split:
    # Both keep their 0-based labels in `_labels`: reading them avoids decoding every image.
    return Split(dataset, list(dataset._labels))


def _flowers102(cfg: DataConfig, img_size: int, seed: int) -> TaskData:
    root = data_root(cfg, FLOWERS102_LAYOUT)
    if not cfg.download:
        require(cfg, root, FLOWERS102_LAYOUT)
    with torchvision_not_found(cfg, FLOWERS102_LAYOUT):
        splits = {s: _Flowers102(root, split=s, download=cfg.download) for s in ("train", "val", "test")}
    source = _Source(
        name="Flowers102",
        antialias=False,  # mmcls's cv2 resize
        class_names=list(Flowers102.classes),
        train=_torchvision_split(splits["train"]),
        test=_torchvision_split(splits["test"]),
        val=_torchvision_split(splits["val"]),
        val_origin="the official Flowers102 val split",
    )
    return _assemble(cfg, img_size, seed, source)


def _pets(cfg: DataConfig, img_size: int, seed: int) -> TaskData:
    root = data_root(cfg, PETS_LAYOUT)
    if not cfg.download:
        require(cfg, root, PETS_LAYOUT)
    with torchvision_not_found(cfg, PETS_LAYOUT):
        trainval, test = (
            OxfordIIITPet(root, split=s, target_types="category", download=cfg.download)
            for s in ("trainval", "test")
        )
    source = _Source(
        name="Oxford-IIIT Pet",
        antialias=False,  # mmcls's cv2 resize
        class_names=list(trainval.classes),
        train=_torchvision_split(trainval),
        test=_torchvision_split(test),
    )
    return _assemble(cfg, img_size, seed, source)


def _voc2007(cfg: DataConfig, img_size: int, seed: int) -> TaskData:
    root = data_root(cfg, VOC2007_LAYOUT)
    if cfg.download and first_missing(_voc2007_folder(root), VOC2007_LAYOUT) is not None:
        with torchvision_not_found(cfg, VOC2007_LAYOUT):
            for image_set in ("trainval", "test"):  # two archives, both extracted to VOCdevkit/VOC2007
                VOCDetection(root, year="2007", image_set=image_set, download=True)
    folder = _voc2007_folder(root)
    require(cfg, folder, VOC2007_LAYOUT)
    splits = {s: _voc2007_split(folder, s) for s in ("train", "val", "test")}
    source = _Source(
        name="VOC2007",
        antialias=False,  # mmcls's cv2 resize
        class_names=list(VOC_CLASSES),
        train=splits["train"],
        test=splits["test"],
        val=splits["val"],
        val_origin="the official VOC2007 val list",
    )
    return _assemble(cfg, img_size, seed, source)


def _voc2007_folder(root: Path) -> Path:
    """root/VOCdevkit/VOC2007, or root itself when it already points at VOCdevkit or VOC2007."""
    candidates = (root / "VOCdevkit" / "VOC2007", root / "VOC2007", root)
    return next((c for c in candidates if (c / "ImageSets").is_dir()), candidates[0])


def _voc2007_split(folder: Path, split: str) -> Split:
    ids = (folder / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
    labels = [voc_single_label(folder / "Annotations" / f"{i}.xml") for i in ids]
    return Split(_ImageFiles([folder / "JPEGImages" / f"{i}.jpg" for i in ids], labels), labels)


def _imagefolder(cfg: DataConfig, img_size: int, seed: int) -> TaskData:
    root = data_root(cfg, IMAGEFOLDER_LAYOUT)
    require(cfg, root, IMAGEFOLDER_LAYOUT)
    names = ("train", "val", "test") if (root / "val").is_dir() else ("train", "test")
    with torchvision_not_found(cfg, IMAGEFOLDER_LAYOUT):
        folders = {name: ImageFolder(root / name) for name in names}
    classes = folders["train"].classes
    for name, folder in folders.items():
        if folder.classes != classes:
            differing = sorted(set(folder.classes) ^ set(classes))
            raise UserError(
                f"Dataset 'imagefolder': the class folders of {root / name} differ from those of "
                f"{root / 'train'} (only in one of them: {', '.join(differing)}); train, val and test "
                "need the same class folders so that their labels agree."
            )
    splits = {name: Split(folder, list(folder.targets)) for name, folder in folders.items()}
    source = _Source(
        name=f"image folder {root}",
        class_names=classes,
        train=splits["train"],
        test=splits["test"],
        val=splits.get("val"),
        val_origin=f"the folder {root / 'val'}",
    )
    return _assemble(cfg, img_size, seed, source)


def _digits(cfg: DataConfig, img_size: int, seed: int) -> TaskData:
    """sklearn's 8x8 digits: a tiny real dataset shipped with sklearn, split 60/20/20 by class."""
    from sklearn.datasets import load_digits  # imported here: sklearn takes a while to import

    digits = load_digits()
    labels = digits.target.tolist()
    everything = Split(_GreyImages(np.round(digits.images * 255 / 16).astype(np.uint8), labels), labels)
    rest, test = stratified_holdout(labels, 0.2, seed)
    trainval = everything.subset(rest)
    train, val = stratified_holdout(trainval.labels, 0.25, seed)
    source = _Source(
        name="sklearn digits",
        class_names=[str(n) for n in digits.target_names],
        train=trainval.subset(train),
        test=everything.subset(test),
        val=trainval.subset(val),
        val_origin=f"20% of sklearn digits (a fixed 60/20/20 split, stratified by class, seed {seed})",
        augment=False,
    )
    return _assemble(cfg, img_size, seed, source)


CLASSIFICATION_DATASETS: dict[str, Builder] = {
    "flowers102": _flowers102,
    "pets": _pets,
    "voc2007": _voc2007,
    "imagefolder": _imagefolder,
    "digits": _digits,
    # The downstream benchmark: cluttered scenes of several objects labelled by the largest (as
    # VOC2007's single-label protocol), or one large object per cluttered scene; and the upstream
    # task that pretrains `backbone.weights=mini`: the 22 other shape kinds, one per clean scene.
    "shapes": partial(build_scene_classification, classes=DOWNSTREAM_CLASSES),
    "shapes_single": partial(
        build_scene_classification, classes=DOWNSTREAM_CLASSES, max_objects=1, scale=(0.3, 0.45)
    ),
    "shapes_upstream": partial(
        build_scene_classification,
        classes=UPSTREAM_CLASSES,
        style="upstream",
        max_objects=1,
        scale=(0.3, 0.45),
    ),
    **VTAB_DATASETS,  # VTAB-1k's 19 tasks, NOAH's lists (`peft_bench.data.vtab`)
    **FGVC_DATASETS,  # FGVC's five sets, VPT's json splits (`peft_bench.data.fgvc`)
    **VTAB_MINI_DATASETS,  # the embedded VTAB (`peft_bench.data.vtab_mini`)
}
