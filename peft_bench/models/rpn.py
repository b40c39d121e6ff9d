"""torchvision's RPN trained as mmdet trains the reference's (`train_cfg.rpn` of
`det/_base_/models/cascade_mask_rcnn_swin_fpn.py`): anchors that cross the image border are
ignored (`allowed_border=0`: neither positive nor negative), and a ground-truth box lends its best
anchors a low-quality match only where their IoU reaches `min_pos_iou=0.3` (torchvision's at any
IoU)."""

from __future__ import annotations

import torch
from torchvision.models.detection._utils import Matcher
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork

MIN_POS_IOU = 0.3


class MinIoUMatcher(Matcher):
    """torchvision's matcher whose low-quality matches need an IoU of at least `min_pos_iou`
    (mmdet's `MaxIoUAssigner(match_low_quality=True, min_pos_iou=...)`)."""

    def __init__(self, high_threshold: float, low_threshold: float, min_pos_iou: float) -> None:
        super().__init__(high_threshold, low_threshold, allow_low_quality_matches=True)
        self.min_pos_iou = min_pos_iou

    def set_low_quality_matches_(
        self, matches: torch.Tensor, all_matches: torch.Tensor, match_quality_matrix: torch.Tensor
    ) -> None:
        best, _ = match_quality_matrix.max(dim=1)
        eligible = (match_quality_matrix == best[:, None]) & (best[:, None] >= self.min_pos_iou)
        predictions = torch.where(eligible)[1]
        matches[predictions] = all_matches[predictions]


class MmdetRPN(RegionProposalNetwork):
    """`RegionProposalNetwork` with mmdet's anchor assignment (module docstring)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.proposal_matcher = MinIoUMatcher(
            self.proposal_matcher.high_threshold, self.proposal_matcher.low_threshold, MIN_POS_IOU
        )
        self.image_sizes: list[tuple[int, int]] = []

    def forward(
        self,
        images: ImageList,
        features: dict[str, torch.Tensor],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        # torchvision assigns anchors without the image sizes: keep them for that step
        self.image_sizes = list(images.image_sizes)
        return super().forward(images, features, targets)

    def assign_targets_to_anchors(
        self, anchors: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        labels, matched_boxes = super().assign_targets_to_anchors(anchors, targets)
        for labels_in_image, anchors_in_image, (height, width) in zip(
            labels, anchors, self.image_sizes, strict=True
        ):
            outside = (
                (anchors_in_image[:, 0] < 0)
                | (anchors_in_image[:, 1] < 0)
                | (anchors_in_image[:, 2] >= width)
                | (anchors_in_image[:, 3] >= height)
            )
            labels_in_image[outside] = -1.0  # ignored by the sampler and the losses
        return labels, matched_boxes
