"""Targets in torchvision's detection format, shared by VOC, COCO and the embedded scenes: `boxes`
float32 (N, 4) xyxy in pixels, `labels` int64 (N,), and for instances `masks` uint8 (N, H, W)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2

Target = dict[str, torch.Tensor]
IGNORE_INDEX = 255  # the label of pixels that no loss and no metric counts (mmseg's)
Transform = Callable[[torch.Tensor, Target], tuple[torch.Tensor, Target]]


class Chain:
    """Transforms of (image, target) applied in order."""

    def __init__(self, *transforms: Transform) -> None:
        self.transforms = transforms

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        for transform in self.transforms:
            image, target = transform(image, target)
        return image, target


def resize_instances(
    image: torch.Tensor, target: Target, short_side: int, max_long_side: int
) -> tuple[torch.Tensor, Target]:
    """mmcv's keep-ratio resize: the shorter side to `short_side` unless the longer would pass
    `max_long_side`; the image bilinear (no antialiasing, as cv2), masks nearest, boxes scaled."""
    height, width = image.shape[-2:]
    scale = min(short_side / min(height, width), max_long_side / max(height, width))
    new_h, new_w = int(height * scale + 0.5), int(width * scale + 0.5)
    image = F.interpolate(image[None], (new_h, new_w), mode="bilinear", align_corners=False)[0]
    factors = torch.tensor([new_w / width, new_h / height] * 2)
    resized = {**target, "boxes": target["boxes"] * factors}
    if "masks" in target:
        masks = target["masks"][None].float()
        resized["masks"] = F.interpolate(masks, (new_h, new_w), mode="nearest")[0].to(target["masks"].dtype)
    return image, resized


def crop_instances(
    image: torch.Tensor, target: Target, top: int, left: int, height: int, width: int
) -> tuple[torch.Tensor, Target]:
    """The image, masks and boxes cropped to a window (boxes clipped to it); the instances whose
    box is left without area are dropped, as mmdet's `RandomCrop`."""
    boxes = target["boxes"] - torch.tensor([left, top, left, top], dtype=target["boxes"].dtype)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    kept = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    cropped = {key: value[kept] for key, value in target.items()}
    cropped["boxes"] = boxes[kept]
    if "masks" in target:
        cropped["masks"] = target["masks"][kept, top : top + height, left : left + width]
    return image[:, top : top + height, left : left + width], cropped


class RandomFlip:
    """Horizontal flip of an image with its target's boxes and (where present) masks, with
    probability `p`: torchvision's v2 flip, which moves them with the image; other target entries
    pass through unchanged."""

    def __init__(self, p: float = 0.5) -> None:
        self.transform = v2.Compose([v2.RandomHorizontalFlip(p), v2.ToPureTensor()])

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        wrapped = {
            **target,
            "boxes": tv_tensors.BoundingBoxes(
                target["boxes"], format="XYXY", canvas_size=tuple(image.shape[-2:])
            ),
        }
        if "masks" in target:
            wrapped["masks"] = tv_tensors.Mask(target["masks"])
        return self.transform(tv_tensors.Image(image), wrapped)
