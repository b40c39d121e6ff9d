"""The RPN trained as the reference's mmdet config: border-crossing anchors ignored, low-quality
matches only from an IoU of 0.3."""

from __future__ import annotations

import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead

from peft_bench.models.rpn import MinIoUMatcher, MmdetRPN


def test_low_quality_matches_need_an_iou_of_at_least_min_pos_iou() -> None:
    matcher = MinIoUMatcher(0.7, 0.3, min_pos_iou=0.3)
    # two ground truths x three anchors: gt 0's best anchor (1) at 0.35, gt 1's best (2) at 0.2
    quality = torch.tensor([[0.1, 0.35, 0.05], [0.0, 0.1, 0.2]])
    matches = matcher(quality)
    assert matches[1] == 0  # low-quality match kept: 0.35 >= 0.3
    assert matches[2] == MinIoUMatcher.BELOW_LOW_THRESHOLD  # 0.2: no low-quality match, a negative
    assert matches[0] == MinIoUMatcher.BELOW_LOW_THRESHOLD


def test_anchors_crossing_the_image_border_are_ignored() -> None:
    generator = AnchorGenerator(((32,),), ((1.0,),))
    rpn = MmdetRPN(generator, RPNHead(4, 1), 0.7, 0.3, 256, 0.5, {"training": 100, "testing": 100},
                   {"training": 50, "testing": 50}, 0.7)  # fmt: skip
    images = ImageList(torch.zeros(1, 3, 64, 64), [(64, 48)])  # 48 px wide, padded to 64
    features = {"0": torch.randn(1, 4, 8, 8)}
    anchors = generator(images, list(features.values()))
    rpn.image_sizes = list(images.image_sizes)
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1])}]
    [labels], _ = rpn.assign_targets_to_anchors(anchors, targets)
    boxes = anchors[0]
    inside = (boxes[:, 0] >= 0) & (boxes[:, 1] >= 0) & (boxes[:, 2] < 48) & (boxes[:, 3] < 64)
    assert (labels[~inside] == -1).all() and inside.any() and (~inside).any()
    [plain], _ = RegionProposalNetwork.assign_targets_to_anchors(rpn, anchors, targets)
    assert torch.equal(labels[inside], plain[inside])  # torchvision's labels inside the border
    assert (labels[inside] == 1).any()  # the anchor on the box is positive
    rpn.train()
    _, losses = rpn(images, features, targets)  # the whole step runs with the sizes it was given
    assert torch.isfinite(sum(losses.values()))
