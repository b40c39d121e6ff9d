"""Image transforms for classification, on PIL images: the reference's augmentation and eval crop
(mmcls's `RandomResizedCrop` with its defaults and a horizontal flip; `Resize` of the short side
to 256 and a 224 centre crop). Resizing is bilinear either as mmcls's cv2 backend does it, without
antialiasing (the paper's datasets), or as torchvision does on PIL images, antialiased (FGVC, whose
peers use torchvision, and an image folder).

The last step normalises per `data.normalization`: ImageNet's statistics (the default), mean = std
= 0.5 (`inception`, inputs in [-1, 1]), or nothing (`none`, inputs in [0, 1]), since VTAB's peers
differ on it (`docs/protocol.md`)."""

from __future__ import annotations

import torch
from torchvision import transforms as T

from peft_bench.config import Normalization
from peft_bench.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = INCEPTION_STD = (0.5, 0.5, 0.5)  # timm's IMAGENET_INCEPTION_MEAN / _STD
# Eval resizes the short side to img_size / 0.875 (256 for 224) and centre-crops, as the reference does.
EVAL_CROP_RATIO = 0.875


def classification_transforms(
    img_size: int, train: bool, normalization: Normalization = Normalization.imagenet, antialias: bool = True
) -> T.Compose:
    """Train: random resized crop (scale 0.08-1, ratio 3/4-4/3, mmcls's and torchvision's defaults)
    and flip; eval: deterministic resize and centre crop. `antialias=False` resizes as mmcls does
    (cv2's bilinear, which samples without antialiasing), on the image as a uint8 tensor, since PIL
    always antialiases; the same random draws either way."""
    if train:
        geometry = [T.RandomResizedCrop(img_size, antialias=antialias), T.RandomHorizontalFlip()]
    else:
        geometry = [T.Resize(round(img_size / EVAL_CROP_RATIO), antialias=antialias), T.CenterCrop(img_size)]
    if antialias:
        return T.Compose([*geometry, *_normalised_tensor(normalization)])
    as_uint8, as_float = T.PILToTensor(), T.ConvertImageDtype(torch.float32)
    return T.Compose([as_uint8, *geometry, as_float, *normalise(normalization)])


def resize_transforms(
    img_size: int,
    normalization: Normalization = Normalization.imagenet,
    interpolation: T.InterpolationMode = T.InterpolationMode.BILINEAR,
) -> T.Compose:
    """Stretch to img_size x img_size, no crop: for tiny images (8x8 digits) where a crop cuts content,
    and VTAB-1k's "direct resize" (bicubic), which every split gets and nothing augments."""
    return T.Compose([T.Resize((img_size, img_size), interpolation), *_normalised_tensor(normalization)])


def _normalised_tensor(normalization: Normalization) -> list[T.ToTensor | T.Normalize]:
    """The common tail: a float tensor in [0, 1], then the normalisation of `data.normalization`."""
    return [T.ToTensor(), *normalise(normalization)]


def normalise(normalization: Normalization) -> list[T.Normalize]:
    """The Normalize step of `normalization`: none for `none`."""
    try:
        normalization = Normalization(normalization)
    except ValueError:
        choices = ", ".join(n.value for n in Normalization)
        raise UserError(f"data.normalization must be one of {choices}, got {normalization!r}.") from None
    if normalization is Normalization.none:
        return []
    if normalization is Normalization.inception:
        return [T.Normalize(INCEPTION_MEAN, INCEPTION_STD)]
    return [T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def tensor_transforms(train: bool, normalization: Normalization = Normalization.imagenet) -> T.Compose:
    """For images already generated as float tensors at the right size (the embedded scenes):
    normalise, and flip at random in training."""
    flip = [T.RandomHorizontalFlip()] if train else []
    return T.Compose([*flip, *normalise(normalization)])
