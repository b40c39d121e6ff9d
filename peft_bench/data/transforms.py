"""Image transforms for classification, on PIL images: the reference's augmentation and eval crop
(mmcls's `RandomResizedCrop` with its defaults and a horizontal flip; `Resize` of the short side
to 256 and a 224 centre crop), bilinear as mmcls (whose cv2 backend does not antialias)."""

from __future__ import annotations

from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Eval resizes the short side to img_size / 0.875 (256 for 224) and centre-crops, as the reference does.
EVAL_CROP_RATIO = 0.875


def classification_transforms(img_size: int, train: bool) -> T.Compose:
    """Train: random resized crop (scale 0.08-1, ratio 3/4-4/3, mmcls's and torchvision's defaults)
    and flip; eval: deterministic resize and centre crop."""
    if train:
        geometry = [T.RandomResizedCrop(img_size), T.RandomHorizontalFlip()]
    else:
        geometry = [T.Resize(round(img_size / EVAL_CROP_RATIO)), T.CenterCrop(img_size)]
    return T.Compose([*geometry, *_normalised_tensor()])


def resize_transforms(img_size: int) -> T.Compose:
    """Stretch to img_size x img_size, no crop: for tiny images (8x8 digits) where a crop cuts content."""
    return T.Compose([T.Resize((img_size, img_size)), *_normalised_tensor()])


def _normalised_tensor() -> list[T.ToTensor | T.Normalize]:
    """The common tail: a float tensor in [0, 1], normalised with the ImageNet statistics of the backbones."""
    return [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def tensor_transforms(train: bool) -> T.Compose:
    """For images already generated as float tensors at the right size (the embedded scenes):
    normalise, and flip at random in training."""
    flip = [T.RandomHorizontalFlip()] if train else []
    return T.Compose([*flip, T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
