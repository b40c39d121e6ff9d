"""Pascal VOC0712 detection: train on VOC2007 + VOC2012 trainval, test on VOC2007 test.

The layout is the devkit's: `<data.root>/VOCdevkit/VOC{2007,2012}/{JPEGImages, Annotations,
ImageSets/Main}`. The paper's protocol (`protocol=paper`, no model selection) needs VOC2012: without
it the run would train on 5,011 images instead of 16,551, so it is refused unless
`data.voc2007_only=true` asks for that deliberately (a protocol of its own: it enters the run id).
Under the harness's protocol VOC2012 is optional. Either way the model-selection text of the record
names the years that trained.

Boxes. VOC names the first and last pixel of a box, 1-based. Targets are those indices less 1 on all
four sides, (xmin - 1, ymin - 1, xmax - 1, ymax - 1), as the reference's mmdet 2.x `XMLDataset` reads
them for training and evaluation alike, with plain IoU in its `eval_map` (`peft_bench.metrics.voc_map`).
That makes every box one pixel narrower and shorter than the continuous interval [xmin - 1, xmax]
that the devkit's +1 widths (and detectron2's conversion) measure, so AP here is mmdet's, as the
paper's numbers are.

Difficult objects (`<difficult>1</difficult>`) are left out of the training targets; evaluation
targets keep them, flagged in a `difficult` bool tensor, for the metric to ignore (the VOC protocol).
Labels are 1..20 in `VOC_CLASSES` order (0 stays free for torchvision's background convention).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import VOCDetection
from torchvision.transforms.v2 import functional as F

from peft_bench.config import DataConfig, Selection
from peft_bench.data.base import TaskData, collate_lists
from peft_bench.data.classification import VOC_CLASSES, voc_single_label
from peft_bench.data.layout import Layout, data_root, require, torchvision_not_found
from peft_bench.data.splits import selection_of, stratified_holdout, without_holdout
from peft_bench.data.targets import RandomFlip, Target
from peft_bench.errors import UserError


def _year_paths(year: str, lists: tuple[str, ...]) -> tuple[str, ...]:
    """The paths a year's loader opens, relative to VOCdevkit/."""
    return (
        f"VOC{year}/JPEGImages",
        f"VOC{year}/Annotations",
        *(f"VOC{year}/ImageSets/Main/{s}.txt" for s in lists),
    )


VOC0712_LAYOUT = Layout(
    required=_year_paths("2007", ("trainval", "test")),
    tree="<data.root>/VOCdevkit/ (data.root may also be VOCdevkit/ itself) holding VOC2007/ with "
    "JPEGImages/000001.jpg ..., Annotations/000001.xml ..., ImageSets/Main/trainval.txt and test.txt "
    "(the test list and images come in the separate VOCtest_06-Nov-2007.tar), and optionally VOC2012/ "
    "with JPEGImages, Annotations and ImageSets/Main/trainval.txt",
    downloadable=True,
)
VOC2012_LAYOUT = replace(VOC0712_LAYOUT, required=_year_paths("2012", ("trainval",)))


@dataclass(frozen=True)
class VOCImage:
    """One annotated image: boxes float32 (N, 4) as in the module docstring, labels int64 (N,) in
    1..20, difficult bool (N,)."""

    path: Path
    annotation: Path
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray


def parse_annotation(image: Path, annotation: Path) -> VOCImage:
    try:
        objects = ET.parse(annotation).getroot().findall("object")
    except (OSError, ET.ParseError) as error:
        raise UserError(f"Cannot read the VOC annotation {annotation}: {error}.") from error
    boxes, labels, difficult = [], [], []
    for obj in objects:
        name = (obj.findtext("name") or "").strip()
        if name not in VOC_CLASSES:
            raise UserError(f"The VOC annotation {annotation} names {name!r}, which is not a VOC class.")
        try:
            xmin, ymin, xmax, ymax = (
                float(obj.findtext(f"bndbox/{s}")) for s in ("xmin", "ymin", "xmax", "ymax")
            )
        except (TypeError, ValueError) as error:
            raise UserError(f"The VOC annotation {annotation} has an incomplete <bndbox>: {error}.") from None
        boxes.append((xmin - 1, ymin - 1, xmax - 1, ymax - 1))  # mmdet's XMLDataset
        labels.append(VOC_CLASSES.index(name) + 1)
        difficult.append((obj.findtext("difficult") or "0").strip() == "1")
    return VOCImage(
        path=image,
        annotation=annotation,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
        difficult=np.asarray(difficult, dtype=bool),
    )


class VOCDetectionSplit(Dataset):
    """(image float (3, H, W) in [0, 1], target). Training: non-difficult `boxes` and `labels`, a random
    horizontal flip; evaluation: all objects, with their `difficult` flags."""

    def __init__(self, images: list[VOCImage], train: bool) -> None:
        self.images = images
        self.flip = RandomFlip(0.5) if train else None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        record = self.images[index]
        with Image.open(record.path) as file:
            image = F.to_dtype(F.pil_to_tensor(file.convert("RGB")), torch.float32, scale=True)
        if self.flip is None:
            return image, {
                "boxes": torch.from_numpy(record.boxes),
                "labels": torch.from_numpy(record.labels),
                "difficult": torch.from_numpy(record.difficult),
            }
        keep = ~record.difficult
        target = {
            "boxes": torch.from_numpy(record.boxes[keep]),
            "labels": torch.from_numpy(record.labels[keep]),
        }
        return self.flip(image, target)


def _training_years(cfg: DataConfig, devkit: Path, selection: Selection) -> tuple[list[str], str]:
    """The years whose trainval trains, and how the record says so."""
    if cfg.voc2007_only:
        return ["2007"], "VOC2007 trainval only (data.voc2007_only=true; the paper trains on VOC2007 + 2012)"
    if (devkit / "VOC2012" / "ImageSets" / "Main" / "trainval.txt").exists():
        require(cfg, devkit, VOC2012_LAYOUT)
        return ["2007", "2012"], "VOC2007+2012 trainval"
    if selection is Selection.none:
        raise UserError(
            f"The paper's VOC runs train on VOC2007 + VOC2012 trainval (16,551 images), but there is no "
            f"VOC2012 at {devkit / 'VOC2012'} (looked for ImageSets/Main/trainval.txt there). Put the "
            "VOCtrainval_11-May-2012 devkit's VOC2012/ beside VOC2007/, or train on VOC2007 trainval "
            "alone (5,011 images) on purpose with data.voc2007_only=true, which the record and the run "
            "id then carry."
        )
    return ["2007"], f"VOC2007 trainval (no VOC2012 at {devkit / 'VOC2012'}: VOC2007 trainval only)"


def build_voc_data(cfg: DataConfig) -> TaskData:
    """VOC0712 as `TaskData`. Model selection (`cfg.selection_split`): `val` holds out
    `cfg.val_fraction` of the trainval images, stratified by class, from `cfg.split_seed`; `none`
    (the paper's protocol) trains on all of trainval and selects nothing; `test` selects on VOC2007
    test."""
    selection = selection_of(cfg)
    devkit = _devkit_folder(data_root(cfg, VOC0712_LAYOUT))
    if cfg.download:
        _download(cfg, devkit)
    require(cfg, devkit, VOC0712_LAYOUT)
    years, source = _training_years(cfg, devkit, selection)
    trainval = [image for year in years for image in _image_list(devkit / f"VOC{year}", "trainval")]
    test = VOCDetectionSplit(_image_list(devkit / "VOC2007", "test"), train=False)
    if selection is Selection.val:
        keys = [voc_single_label(image.annotation) for image in trainval]
        kept, held = stratified_holdout(keys, cfg.val_fraction, cfg.split_seed)
        train, val = [trainval[i] for i in kept], VOCDetectionSplit([trainval[i] for i in held], train=False)
        described = (
            f"val: {cfg.val_fraction:.0%} of the {source} images held out, stratified by the class of "
            f"their largest non-difficult object (seed {cfg.split_seed})"
        )
    else:
        train = trainval
        val, described = without_holdout(selection, test, source)
    return TaskData(
        train=VOCDetectionSplit(train, train=True),
        val=val,
        test=test,
        num_classes=len(VOC_CLASSES),
        class_names=list(VOC_CLASSES),
        selection=described,
        collate_fn=collate_lists,
    )


def _devkit_folder(root: Path) -> Path:
    """root/VOCdevkit, or root itself when it already is the devkit folder."""
    return root if (root / "VOC2007").is_dir() and not (root / "VOCdevkit").is_dir() else root / "VOCdevkit"


def _download(cfg: DataConfig, devkit: Path) -> None:
    """torchvision's three VOC0712 archives, each extracted to VOCdevkit/VOC<year>, where missing."""
    for year, image_set, layout in (
        ("2007", "trainval", VOC0712_LAYOUT),
        ("2007", "test", VOC0712_LAYOUT),
        ("2012", "trainval", VOC2012_LAYOUT),
    ):
        if (devkit / f"VOC{year}" / "ImageSets" / "Main" / f"{image_set}.txt").exists():
            continue
        with torchvision_not_found(cfg, layout):
            VOCDetection(devkit.parent, year=year, image_set=image_set, download=True)


def _image_list(folder: Path, split: str) -> list[VOCImage]:
    ids = (folder / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
    return [
        parse_annotation(folder / "JPEGImages" / f"{i}.jpg", folder / "Annotations" / f"{i}.xml") for i in ids
    ]
