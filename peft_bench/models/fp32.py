"""Detector parts that stay in float32 under autocast, as mmdet keeps them (`force_fp32`).

torchvision builds anchors in the dtype of the feature maps and decodes boxes in the dtype of the
deltas; its focal loss computes `1 - p_t` in the logits' dtype. Under bf16 autocast that rounds
anchor coordinates by up to 3 px at 1000 px, decoded box centres by +-2 px between 512 and 1024
px, the down-weighting of easy negatives (x1.4 off at p = 0.01, 0 at p = 0.001) and the scores that
rank detections. Each class here hands float32 to what comes after it. In `cascade.py`, the
`BoxPredictor` outputs are float32 likewise, and `MmcvRoIAlign` pools at float32 RoIs (bf16 ones sit
on a 4 px grid between 512 and 1024 px).
"""

from __future__ import annotations

import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.rpn import RPNHead

CPU = torch.device("cpu")


class Float32AnchorGenerator(AnchorGenerator):
    """Anchors in float32 whatever the dtype of the feature maps (only their sizes are read)."""

    def forward(self, image_list: ImageList, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        sizes = [f.new_empty(f.shape[-2:], dtype=torch.float32) for f in feature_maps]
        return super().forward(image_list, sizes)


class MmdetAnchorGenerator(Float32AnchorGenerator):
    """Anchors as mmdet 2.x's `AnchorGenerator` makes them: each base anchor of width
    scale / sqrt(ratio) and height scale * sqrt(ratio) centred on its cell's corner, at the exact
    (float) scale, where torchvision rounds the base anchors to whole pixels."""

    def generate_anchors(
        self,
        scales: list[float],
        aspect_ratios: list[float],
        dtype: torch.dtype = torch.float32,
        device: torch.device = CPU,
    ) -> torch.Tensor:
        scales_ = torch.as_tensor(scales, dtype=dtype, device=device)
        heights = torch.sqrt(torch.as_tensor(aspect_ratios, dtype=dtype, device=device))
        ws = (scales_[None, :] / heights[:, None]).view(-1)
        hs = (scales_[None, :] * heights[:, None]).view(-1)
        return torch.stack([-ws, -hs, ws, hs], dim=1) / 2


class Float32RetinaNetHead(RetinaNetHead):
    """torchvision's RetinaNet head with float32 class logits and box deltas."""

    def forward(self, x: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: out.float() for name, out in super().forward(x).items()}


class Float32RPNHead(RPNHead):
    """torchvision's RPN head with float32 objectness logits and box deltas."""

    def forward(self, x: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits, deltas = super().forward(x)
        return [t.float() for t in logits], [t.float() for t in deltas]


class Float32BoxPredictor(FastRCNNPredictor):
    """torchvision's class-specific box predictor with float32 outputs."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores, deltas = super().forward(x)
        return scores.float(), deltas.float()
