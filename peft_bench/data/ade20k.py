"""ADE20K (the SceneParsing challenge release) and the segmentation transforms, as mmsegmentation's.

Layout: <root>/ADEChallengeData2016/{images,annotations}/{training,validation}/ADE_*.{jpg,png}.
Label maps hold 0 ("other") and 1-150; mmseg's `reduce_zero_label` maps 0 to 255 (ignored) and k
to k - 1, so the 150 classes are 0-149 (`ADE20K_CLASSES`, mmseg's order and names).

Splits: the model trains on the training split less a hold-out of `data.val_fraction` (seed
`data.split_seed`) that selects it; `data.selection_split=none` (the paper's protocol) trains on all
of training and selects nothing; `test` trains on all of training and selects on the validation
split. The test split is validation.

Training pipeline, as mmseg's ADE20K config: random resize (ratio 0.5-2.0 of the scale, keeping
the aspect ratio), random crop (re-drawn up to 10 times while one class covers >= 75% of it),
flip 0.5, mmseg's PhotoMetricDistortion (in HSV, as its cv2 code: `peft_bench.data.colour`),
ImageNet normalisation, padding to the crop (0 image, 255 label).
Evaluation resizes the image to the scale, keeping the ratio, and keeps the label at its original
size: the evaluator resizes the logits back, as mmseg does. Resizes are bilinear without
antialiasing, as mmcv's cv2 backend.

The scale (long, short) and the crop are arguments: the task reads them from the config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from peft_bench.config import DataConfig, Selection
from peft_bench.data.base import TaskData, collate_lists
from peft_bench.data.colour import change_hsv
from peft_bench.data.layout import Layout, data_root, require
from peft_bench.data.splits import selection_of, stratified_holdout, without_holdout
from peft_bench.data.targets import IGNORE_INDEX
from peft_bench.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from peft_bench.errors import UserError

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair",
    "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box",
    "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow",
    "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet",
    "flower", "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer",
    "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower",
    "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle",
    "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle",
    "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light",
    "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower",
    "radiator", "glass", "clock", "flag",
)  # fmt: skip

ADE20K_CROP = 512
RATIO_RANGE = (0.5, 2.0)
CAT_MAX_RATIO = 0.75
SPLITS = ("training", "validation")

ADE20K_LAYOUT = Layout(
    required=tuple(f"{kind}/{split}" for split in SPLITS for kind in ("images", "annotations")),
    tree="<data.root>/ADEChallengeData2016/ (data.root may also be ADEChallengeData2016/ itself) holding "
    "images/training/ADE_train_00000001.jpg ..., annotations/training/ADE_train_00000001.png ..., and "
    "images/validation/, annotations/validation/ alike (ADEChallengeData2016.zip of the MIT Scene "
    "Parsing benchmark)",
    downloadable=False,
)


# ---------------------------------------------------------------------------------------------
# Transforms on (image uint8 or float (3, H, W), label (H, W)) pairs.


def rescale_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv's keep-ratio rescale: the largest size with long side <= scale[0], short <= scale[1]."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def normalise(image: torch.Tensor) -> torch.Tensor:
    """uint8 0-255 or float 0-1 -> float normalised with the ImageNet statistics."""
    image = image.float() / 255 if image.dtype == torch.uint8 else image
    return TF.normalize(image, IMAGENET_MEAN, IMAGENET_STD)


def random_flip(image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if torch.rand(()) < 0.5:
        return image.flip(-1), label.flip(-1)
    return image, label


def _uniform(low: float, high: float) -> float:
    return float(torch.empty(()).uniform_(low, high))


def _coin() -> bool:
    return bool(torch.rand(()) < 0.5)


def photometric_distortion(image: torch.Tensor) -> torch.Tensor:
    """mmseg's PhotoMetricDistortion on a uint8 RGB image, step by step and in its order: brightness
    +-32, contrast x0.5-1.5 (before or after the colour steps, at random), HSV saturation x0.5-1.5,
    hue + an integer in [-18, 18) of cv2's 180 hue steps; each step with probability 0.5, each
    leaving a uint8 image."""

    def contrast(x: torch.Tensor) -> torch.Tensor:
        return (x.float() * _uniform(0.5, 1.5)).clamp(0, 255).to(torch.uint8) if _coin() else x

    if _coin():
        image = (image.float() + _uniform(-32, 32)).clamp(0, 255).to(torch.uint8)
    contrast_first = _coin()
    if contrast_first:
        image = contrast(image)
    if _coin():
        factor = _uniform(0.5, 1.5)
        image = change_hsv(image, 1, lambda saturation: (saturation * factor).clamp(0, 1))
    if _coin():
        shift = int(torch.randint(-18, 18, ())) / 180
        image = change_hsv(image, 0, lambda hue: (hue + shift) % 1.0)
    return image if contrast_first else contrast(image)


class TrainTransform:
    """mmseg's ADE20K training pipeline (module docstring): -> ((3, crop, crop), (crop, crop) int64)."""

    def __init__(self, scale: tuple[int, int], crop: int) -> None:
        self.scale = scale
        self.crop = crop

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ratio = _uniform(*RATIO_RANGE)
        size = rescale_size(*label.shape, (int(self.scale[0] * ratio), int(self.scale[1] * ratio)))
        image = TF.resize(image, list(size), InterpolationMode.BILINEAR, antialias=False)
        label = TF.resize(label[None], list(size), InterpolationMode.NEAREST)[0]
        top, left = self._crop_origin(label)
        image = image[:, top : top + self.crop, left : left + self.crop]
        label = label[top : top + self.crop, left : left + self.crop]
        image, label = random_flip(image, label)
        image = normalise(photometric_distortion(image))
        pad = (0, self.crop - label.shape[1], 0, self.crop - label.shape[0])
        return F.pad(image, pad, value=0.0), F.pad(label.long(), pad, value=IGNORE_INDEX)

    def _crop_origin(self, label: torch.Tensor) -> tuple[int, int]:
        """A random crop origin, re-drawn (up to 10 draws) while one class covers >= CAT_MAX_RATIO
        of the crop's labelled pixels, or the crop holds a single class."""
        height, width = label.shape
        for _ in range(10):
            top = int(torch.randint(0, max(height - self.crop, 0) + 1, ()))
            left = int(torch.randint(0, max(width - self.crop, 0) + 1, ()))
            window = label[top : top + self.crop, left : left + self.crop].flatten().long()
            counts = torch.bincount(window, minlength=IGNORE_INDEX + 1)[:IGNORE_INDEX]
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() < CAT_MAX_RATIO * counts.sum():
                break
        return top, left


class EvalTransform:
    """Resize the image to the scale, keeping its ratio; the label keeps its original size."""

    def __init__(self, scale: tuple[int, int]) -> None:
        self.scale = scale

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = rescale_size(*label.shape, self.scale)
        image = TF.resize(image, list(size), InterpolationMode.BILINEAR, antialias=False)
        return normalise(image), label.long()


class FlipNormalise:
    """For images generated at their final size (the embedded scenes): flip in training, normalise."""

    def __init__(self, train: bool) -> None:
        self.train = train

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.train:
            image, label = random_flip(image, label)
        return normalise(image), label


def reduce_zero_label(label: torch.Tensor) -> torch.Tensor:
    """uint8 ADE20K labels: 0 ("other") -> 255 (ignored), k -> k - 1."""
    return torch.where(label == 0, IGNORE_INDEX, label - 1).to(torch.uint8)


@dataclass(frozen=True)
class _Pair:
    image: Path
    label: Path


class ADE20KSplit(Dataset):
    """Image and label files of one split, decoded as uint8 tensors and passed to `transform`; the
    label PNG's raw values (grey levels or palette indices) are the classes."""

    def __init__(self, pairs: list[_Pair], transform: TrainTransform | EvalTransform) -> None:
        self.pairs = pairs
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        pair = self.pairs[index]
        with Image.open(pair.image) as image, Image.open(pair.label) as label:
            pixels = TF.pil_to_tensor(image.convert("RGB"))
            labels = reduce_zero_label(torch.from_numpy(np.array(label, dtype=np.uint8)))
        return self.transform(pixels, labels)


def _folder(cfg: DataConfig) -> Path:
    root = data_root(cfg, ADE20K_LAYOUT)
    candidates = (root / "ADEChallengeData2016", root)
    folder = next((c for c in candidates if (c / "images").is_dir()), candidates[0])
    require(cfg, folder, ADE20K_LAYOUT)
    return folder


def _pairs(folder: Path, split: str) -> list[_Pair]:
    images = sorted((folder / "images" / split).glob("*.jpg"))
    if not images:
        raise UserError(f"Dataset 'ade20k': {folder / 'images' / split} holds no .jpg image.")
    pairs = [_Pair(image, folder / "annotations" / split / f"{image.stem}.png") for image in images]
    missing = next((p.label for p in pairs if not p.label.exists()), None)
    if missing is not None:
        raise UserError(
            f"Dataset 'ade20k': the label map {missing} of {missing.stem}.jpg does not exist; every "
            "image of images/<split>/ needs its .png of the same name in annotations/<split>/."
        )
    return pairs


def build_ade20k_data(cfg: DataConfig, scale: tuple[int, int], crop: int) -> TaskData:
    """ADE20K per the module docstring; `scale` is (long side cap, short side), `crop` the side of
    training crops."""
    selection = selection_of(cfg)
    folder = _folder(cfg)
    training, validation = (_pairs(folder, split) for split in SPLITS)
    train_transform, eval_transform = TrainTransform(scale, crop), EvalTransform(scale)
    test = ADE20KSplit(validation, eval_transform)
    if selection is not Selection.val:
        train = ADE20KSplit(training, train_transform)
        val, described = without_holdout(
            selection, test, "all of the ADE20K training split; test: validation"
        )
    else:
        # One "class" per image: a seeded random hold-out with stratified_holdout's size rules.
        kept, held = stratified_holdout([0] * len(training), cfg.val_fraction, cfg.split_seed)
        train = Subset(ADE20KSplit(training, train_transform), kept)
        val = Subset(ADE20KSplit(training, eval_transform), held)
        described = (
            f"val: {cfg.val_fraction:.0%} of the ADE20K training split held out at random "
            f"(seed {cfg.split_seed})"
        )
    return TaskData(
        train=train,
        val=val,
        test=test,
        num_classes=len(ADE20K_CLASSES),
        class_names=list(ADE20K_CLASSES),
        selection=described,
        collate_fn=collate_lists,
    )
