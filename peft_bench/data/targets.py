"""Targets in torchvision's detection format, shared by VOC, COCO and the embedded scenes: `boxes`
float32 (N, 4) xyxy in pixels, `labels` int64 (N,), and for instances `masks` uint8 (N, H, W)."""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

Target = dict[str, torch.Tensor]


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
