"""Instance segmentation data: COCO 2017, and the embedded scenes in the same target format.

Samples are `(image float (3, H, W) in [0, 1], target)` at the original size (the detector resizes
them; in training, a flip and, half the time, the config's resize-and-crop branch: `CropBranch`),
with targets in torchvision's detection format: `boxes` float32 (N, 4) xyxy in pixels, `labels`
int64 (N,) with 0 kept for the background, and `masks` uint8 (N, H, W).

COCO: `<root>/annotations/instances_{train,val}2017.json` with `<root>/{train,val}2017/*.jpg`, read
with pycocotools; polygons and RLEs (compressed or not) become masks through `COCO.annToMask`, and
the 80 category ids (1..90 with gaps) map to labels 1..80 in id order. Training targets hold the
non-crowd objects with a box of at least 1x1 px and a positive area, and training skips images
left without any (mmdet's `filter_empty_gt`). Evaluation targets hold every object of every image,
crowds included with `iscrowd` = 1, so that the COCO evaluation ignores detections on crowds as the
official evaluation does. Model selection: `data.selection_split=val` holds out `data.val_fraction`
of the train2017 images at random (seed `data.split_seed`); `none` (the paper's protocol) trains on
all of train2017 and selects nothing; `test` selects on val2017, which is always the test split.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision.ops import box_convert
from torchvision.transforms.v2.functional import pil_to_tensor

from peft_bench.config import DataConfig, Selection
from peft_bench.data.base import TaskData, collate_lists
from peft_bench.data.layout import Layout, data_root, not_found, require
from peft_bench.data.splits import selection_of, stratified_holdout, without_holdout
from peft_bench.data.targets import Chain, RandomFlip, Target, Transform, crop_instances, resize_instances
from peft_bench.errors import UserError

COCO_LAYOUT = Layout(
    required=(
        "annotations/instances_train2017.json",
        "annotations/instances_val2017.json",
        "train2017",
        "val2017",
    ),
    tree="<data.root>/annotations/instances_train2017.json and instances_val2017.json, "
    "<data.root>/train2017/000000000009.jpg ... and <data.root>/val2017/000000000139.jpg ... (the 2017 "
    "train and val images and the 2017 train/val annotations of cocodataset.org, unzipped into data.root)",
    downloadable=False,
)


class CropBranch:
    """The crop branch of the Mona COCO config's training augmentation (`AutoAugment` after the
    flip: with probability 1/2 the multi-scale resize alone, else this branch, then that resize,
    which the detector does). Resize the shorter side to 400, 500 or 600 (the longer at most
    1333), then crop a random window of 384-600 px per side (mmdet's `RandomCrop` with
    `crop_type='absolute_range'`), dropping the instances left without area (`allow_negative_crop`:
    an image may be left without any)."""

    SHORT_SIDES = (400, 500, 600)
    CROP = (384, 600)
    MAX_LONG_SIDE = 1333

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        if torch.rand(()) >= self.p:
            return image, target
        short = self.SHORT_SIDES[int(torch.randint(len(self.SHORT_SIDES), ()))]
        image, target = resize_instances(image, target, short, self.MAX_LONG_SIDE)
        height, width = image.shape[-2:]
        crop_h, crop_w = (
            _between(min(side, self.CROP[0]), min(side, self.CROP[1])) for side in (height, width)
        )
        top, left = _between(0, height - crop_h), _between(0, width - crop_w)
        return crop_instances(image, target, top, left, crop_h, crop_w)


def _between(low: int, high: int) -> int:
    """A random integer in [low, high]."""
    return int(torch.randint(low, high + 1, ()))


class CocoInstances(Dataset):
    """The images `image_ids` of a COCO annotation file, as training (`train=True`: valid non-crowd
    objects only) or evaluation targets (every object, with `iscrowd`)."""

    def __init__(
        self,
        coco: COCO,
        image_dir: Path,
        image_ids: list[int],
        labels: dict[int, int],
        train: bool,
        transform: Transform | None = None,
    ) -> None:
        self.coco = coco
        self.image_dir = image_dir
        self.image_ids = image_ids
        self.labels = labels  # COCO category id -> contiguous label 1..K
        self.train = train
        self.transform = transform

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        info = self.coco.imgs[self.image_ids[index]]
        with Image.open(self.image_dir / info["file_name"]) as file:
            image = pil_to_tensor(file.convert("RGB")).float().div_(255)
        objects = self.objects(info["id"])
        height, width = image.shape[-2:]
        masks = [self.coco.annToMask(obj) for obj in objects]
        boxes = torch.tensor([obj["bbox"] for obj in objects], dtype=torch.float32).reshape(-1, 4)
        target = {
            "boxes": box_convert(boxes, "xywh", "xyxy"),
            "labels": torch.tensor([self.labels[obj["category_id"]] for obj in objects], dtype=torch.int64),
            "masks": torch.from_numpy(np.stack(masks) if masks else np.zeros((0, height, width), np.uint8)),
        }
        if not self.train:
            target["iscrowd"] = torch.tensor([obj.get("iscrowd", 0) for obj in objects], dtype=torch.int64)
        return self.transform(image, target) if self.transform else (image, target)

    def objects(self, image_id: int) -> list[dict]:
        annotations = self.coco.imgToAnns[image_id]
        return [a for a in annotations if is_trainable(a)] if self.train else list(annotations)


def is_trainable(annotation: dict) -> bool:
    """A non-crowd object with a box of at least 1x1 px and a positive area (mmdet's training filter)."""
    _, _, w, h = annotation["bbox"]
    return not annotation.get("iscrowd", 0) and w >= 1 and h >= 1 and annotation.get("area", 1) > 0


def build_coco_data(cfg: DataConfig) -> TaskData:
    """COCO 2017 train / val / test as in the module docstring; fails early on missing files."""
    selection = selection_of(cfg)
    root = data_root(cfg, COCO_LAYOUT)
    require(cfg, root, COCO_LAYOUT)
    train_coco = _load(cfg, root / "annotations" / "instances_train2017.json")
    val_coco = _load(cfg, root / "annotations" / "instances_val2017.json")
    category_ids = sorted(train_coco.getCatIds())
    if sorted(val_coco.getCatIds()) != category_ids:
        raise UserError(
            f"Dataset 'coco': the categories of instances_val2017.json differ from those of "
            f"instances_train2017.json under {root / 'annotations'}; use the official 2017 annotations."
        )
    labels = {cat: i + 1 for i, cat in enumerate(category_ids)}
    names = [train_coco.cats[cat]["name"] for cat in category_ids]

    def split(coco: COCO, folder: str, ids: list[int], train: bool) -> CocoInstances:
        transform = Chain(RandomFlip(), CropBranch()) if train else None
        return CocoInstances(coco, root / folder, ids, labels, train, transform)

    train_ids = sorted(train_coco.getImgIds())
    test = split(val_coco, "val2017", sorted(val_coco.getImgIds()), train=False)
    if selection is not Selection.val:
        val, described = without_holdout(selection, test, "all of COCO train2017; test: val2017")
    else:
        kept, held = stratified_holdout([0] * len(train_ids), cfg.val_fraction, cfg.split_seed)
        val = split(train_coco, "train2017", [train_ids[i] for i in held], train=False)
        train_ids = [train_ids[i] for i in kept]
        described = (
            f"val: {cfg.val_fraction:.0%} of the COCO train2017 images held out at random "
            f"(seed {cfg.split_seed}); test: val2017"
        )
    with_objects = [i for i in train_ids if any(is_trainable(a) for a in train_coco.imgToAnns[i])]
    return TaskData(
        train=split(train_coco, "train2017", with_objects, train=True),
        val=val,
        test=test,
        num_classes=len(category_ids),
        class_names=names,
        selection=described,
        collate_fn=collate_lists,
    )


def _load(cfg: DataConfig, path: Path) -> COCO:
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            return COCO(str(path))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise not_found(
            cfg, f"{path} cannot be read as a COCO annotation file ({error})", COCO_LAYOUT
        ) from error
