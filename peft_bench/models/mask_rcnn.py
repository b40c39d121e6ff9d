"""The detector of the paper's COCO runs: Cascade Mask R-CNN (or Mask R-CNN) on a backbone + FPN.

The detector is torchvision's `MaskRCNN` as the reference's mmdet configs build it: an FPN over the
four pyramid levels (strides 4-32) with a max-pooled fifth level, one anchor size per level with
ratios 0.5 / 1 / 2, and images resized by torchvision's `GeneralizedRCNNTransform` (a random
`head.min_size` per image in training, the last one in evaluation, the longer side capped at
`head.max_size`), normalised with the ImageNet statistics from [0, 1] inputs. Cascade Mask R-CNN
(`head=cascade_mask_rcnn`) swaps its RoI heads for the three cascade stages of
`peft_bench.models.cascade`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from peft_bench.backbones.base import Backbone
from peft_bench.config import Config, MaskRCNNHeadConfig
from peft_bench.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from peft_bench.engine.contract import TaskModel
from peft_bench.errors import UserError
from peft_bench.models.cascade import (
    CascadeRoIHeads,
    MmcvRoIAlign,
    fcn_mask_head,
    mmdet_stages,
    shared2fc_head,
)
from peft_bench.models.fp32 import Float32AnchorGenerator, Float32BoxPredictor, Float32RPNHead
from peft_bench.models.fpn import BackboneFPN, PyramidBackbone
from peft_bench.models.rpn import MmdetRPN

ANCHOR_SIZES = (32, 64, 128, 256, 512)  # mmdet's scale 8 at strides 4-64 (torchvision's default)
ASPECT_RATIOS = (0.5, 1.0, 2.0)
RPN_IOUS, RPN_SAMPLES = (0.7, 0.3), 256  # torchvision's defaults, mmdet's train_cfg.rpn


@dataclass(frozen=True)
class ProposalBudget:
    """How many boxes the R-CNN carries: RPN proposals per FPN level before NMS and per image after
    it, as (training, evaluation), the RoIs sampled per image to train the box heads, and the
    detections kept per image."""

    rpn_pre_nms: tuple[int, int]
    rpn_post_nms: tuple[int, int]
    roi_samples: int
    detections: int


MMDET_BUDGET = ProposalBudget((2000, 1000), (2000, 1000), roi_samples=512, detections=100)
# The embedded scenes hold 1-2 objects in 64 px: a small budget keeps CPU steps short (the mask
# heads run on every detection, three times in the cascade; 32 sampled RoIs instead of 64 take a
# third off a training step).
BUDGETS = {"shapes_inst": ProposalBudget((256, 256), (128, 100), roi_samples=32, detections=20)}


def build_detector(
    backbone: Backbone, num_classes: int, head: MaskRCNNHeadConfig, budget: ProposalBudget, cascade: bool
) -> MaskRCNN:
    """torchvision's Mask R-CNN over `num_classes` object classes, with the cascade's RoI heads if
    `cascade`."""
    sizes = tuple(head.anchor_sizes or ANCHOR_SIZES)
    if len(sizes) != len(ANCHOR_SIZES):
        raise UserError(
            f"head.anchor_sizes needs one anchor size per FPN level, {len(ANCHOR_SIZES)} in all "
            f"(strides 4 to 64), got {list(sizes)}."
        )
    if head.box_fc_channels < 1:
        raise UserError(
            f"head.box_fc_channels is the width of the box heads' FC layers and must be at least 1, got "
            f"{head.box_fc_channels}; mmdet's is 1024 (the default), the embedded instance task's 256."
        )
    anchors = Float32AnchorGenerator(tuple((s,) for s in sizes), (ASPECT_RATIOS,) * len(sizes))
    channels, classes = head.fpn_channels, num_classes + 1  # torchvision counts the background
    mask_head, mask_predictor = fcn_mask_head(channels, classes)
    pools = {}
    if head.mmcv_roi_align:
        levels, strides = ["0", "1", "2", "3"], (4, 8, 16, 32)
        pools = {
            "box_roi_pool": MmcvRoIAlign(levels, 7, strides),
            "mask_roi_pool": MmcvRoIAlign(levels, 14, strides),
        }
    detector = MaskRCNN(
        BackboneFPN(PyramidBackbone(backbone, (0, 1, 2, 3)), channels, LastLevelMaxPool()),
        min_size=tuple(head.min_size),
        max_size=head.max_size,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        rpn_anchor_generator=anchors,
        rpn_head=Float32RPNHead(channels, len(ASPECT_RATIOS)),
        rpn_pre_nms_top_n_train=budget.rpn_pre_nms[0],
        rpn_pre_nms_top_n_test=budget.rpn_pre_nms[1],
        rpn_post_nms_top_n_train=budget.rpn_post_nms[0],
        rpn_post_nms_top_n_test=budget.rpn_post_nms[1],
        box_batch_size_per_image=budget.roi_samples,
        box_detections_per_img=budget.detections,
        box_predictor=Float32BoxPredictor(head.box_fc_channels, classes),
        # built after everything else, where torchvision builds its default: the same random draws
        box_head=shared2fc_head(channels, head.box_fc_channels),
        mask_head=mask_head,
        mask_predictor=mask_predictor,
        **pools,
    )
    if head.mmdet_rpn:
        detector.rpn = MmdetRPN(
            detector.rpn.anchor_generator,
            detector.rpn.head,
            fg_iou_thresh=RPN_IOUS[0],
            bg_iou_thresh=RPN_IOUS[1],
            batch_size_per_image=RPN_SAMPLES,
            positive_fraction=0.5,
            pre_nms_top_n={"training": budget.rpn_pre_nms[0], "testing": budget.rpn_pre_nms[1]},
            post_nms_top_n={"training": budget.rpn_post_nms[0], "testing": budget.rpn_post_nms[1]},
            nms_thresh=0.7,
        )
    if cascade:
        plain = detector.roi_heads
        detector.roi_heads = CascadeRoIHeads(
            plain.box_roi_pool,
            mmdet_stages(channels, classes, box_head=head.box_head, fc_channels=head.box_fc_channels),
            plain.mask_roi_pool,
            batch_size_per_image=budget.roi_samples,
            positive_fraction=plain.fg_bg_sampler.positive_fraction,
            score_thresh=plain.score_thresh,
            nms_thresh=plain.nms_thresh,
            detections_per_img=plain.detections_per_img,
        )
    return detector


class InstanceSegmentationModel(TaskModel):
    """The detector, with the loss of torchvision's loss dict summed for the trainer."""

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        head: MaskRCNNHeadConfig,
        budget: ProposalBudget = MMDET_BUDGET,
        cascade: bool = True,
    ) -> None:
        super().__init__()
        self.detector = build_detector(backbone, num_classes, head, budget, cascade)

    @property
    def backbone(self) -> Backbone:  # nested in the detector: exposed, not registered twice
        return self.detector.backbone.body.backbone

    @property
    def neck(self) -> nn.Module:
        return self.detector.backbone.neck()

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        losses = self.detector(images, targets)
        return torch.stack(list(losses.values())).sum()

    def predict(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """torchvision's detections: boxes, labels, scores and masks (N, 1, H, W) of probabilities."""
        return self.detector(images)


def mask_rcnn_head(
    backbone: Backbone, num_classes: int, cfg: Config, cascade: bool = False
) -> InstanceSegmentationModel:
    """`head=mask_rcnn` (registered in `peft_bench.tasks`), with the dataset's proposal budget."""
    budget = BUDGETS.get(cfg.data.name, MMDET_BUDGET)
    return InstanceSegmentationModel(backbone, num_classes, cfg.head, budget, cascade)


def cascade_mask_rcnn_head(backbone: Backbone, num_classes: int, cfg: Config) -> InstanceSegmentationModel:
    """`head=cascade_mask_rcnn`: Mask R-CNN with the cascade's RoI heads."""
    return mask_rcnn_head(backbone, num_classes, cfg, cascade=True)
