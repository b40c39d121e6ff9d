"""The detector of the paper's VOC runs: torchvision's RetinaNet on a backbone + FPN.

The neck follows the paper's reference mmdet config for VOC: an FPN over pyramid levels 1-3
(strides 8, 16, 32; on a hierarchical backbone its stages 1-3, widths 2m, 4m, 8m) with 5 outputs,
P6 computed from C5 and P7 from P6 (mmdet's `add_extra_convs='on_input'`), with a ReLU before P7
as torchvision's or none as mmdet's default (`head.relu_before_extra_convs`). The head is
torchvision's RetinaNet, whose settings match mmdet's RetinaNet: 3 scales x 3 ratios of anchors
per level, IoU 0.5 / 0.4 assignment, focal + L1 losses; at test, score > 0.05, the top 1000 per
level, NMS at 0.5, at most 100 detections per image. Which 1000 per level: torchvision keeps the
(anchor, class) pairs of the highest scores above 0.05; mmdet's `RetinaHead` (`nms_pre=1000`; here
with `head.mmdet_candidates`) keeps the anchors of the highest best-class scores, each with every
class score, and thresholds at 0.05 after (`MmdetRetinaNet`).

Labels. Datasets give labels 1..K (0 is torchvision's background id). torchvision's RetinaNet has no
background class: its sigmoid classifier has `num_classes` outputs, and a box of label l trains
output l. It is built with K outputs, as mmdet's (`num_classes=20` for VOC), and labels are shifted
by one on the way in and out, so that no output is wasted on a background that never occurs.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torchvision.models.detection import RetinaNet
from torchvision.ops import boxes as box_ops

from peft_bench.backbones.base import Backbone
from peft_bench.config import Config, RetinaNetHeadConfig
from peft_bench.data.targets import Target
from peft_bench.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from peft_bench.engine.contract import TaskModel
from peft_bench.errors import UserError
from peft_bench.models.fp32 import Float32AnchorGenerator, Float32RetinaNetHead, MmdetAnchorGenerator
from peft_bench.models.fpn import BackboneFPN, ExtraLevelsOnInput, PyramidBackbone

FPN_STAGES = (1, 2, 3)
RATIOS = (0.5, 1.0, 2.0)
GROUPS = 32  # GroupNorm's groups in the subnets with `head.group_norm` (torchvision's v2 head, mmdet's GN)
TORCHVISION_ANCHOR_SIZES = (32, 64, 128, 256, 512)  # base sizes on P3-P7: torchvision's and mmdet's


def retinanet_fpn(backbone: Backbone, head: RetinaNetHeadConfig) -> BackboneFPN:
    """The FPN over levels 1-3 with P6 from C5 and P7 from P6."""
    body = PyramidBackbone(backbone, FPN_STAGES)
    extra = ExtraLevelsOnInput(body.in_channels[-1], head.fpn_channels, head.relu_before_extra_convs)
    return BackboneFPN(body, head.fpn_channels, extra)


def anchor_generator(base_sizes: list[int], mmdet: bool = False) -> Float32AnchorGenerator:
    """Anchors of sizes base * 2^(0, 1/3, 2/3) and ratios 0.5, 1, 2 per level, as torchvision's default
    (base sizes 32-512; sizes truncated to integers, base anchors rounded to whole pixels) or, with
    `mmdet`, as mmdet's (octave_base_scale 4, 3 scales per octave: exact sizes, unrounded anchors)."""
    if mmdet:
        sizes = tuple(tuple(s * 2 ** (k / 3) for k in range(3)) for s in base_sizes)
        return MmdetAnchorGenerator(sizes, (RATIOS,) * len(sizes))
    sizes = tuple(tuple(int(s * 2 ** (k / 3)) for k in range(3)) for s in base_sizes)
    return Float32AnchorGenerator(sizes, (RATIOS,) * len(sizes))


class MmdetRetinaNet(RetinaNet):
    """torchvision's RetinaNet with mmdet's test-time candidates: per level, the `topk_candidates`
    anchors of the highest best-class scores, all their class scores kept; then, over the levels, the
    (anchor, class) pairs above `score_thresh`, NMS per class and the best `detections_per_img`
    (mmdet 2.x `AnchorHead._get_bboxes` and `multiclass_nms`)."""

    def postprocess_detections(
        self,
        head_outputs: dict[str, list[torch.Tensor]],
        anchors: list[list[torch.Tensor]],
        image_shapes: list[tuple[int, int]],
    ) -> list[dict[str, torch.Tensor]]:
        detections = []
        for index, image_shape in enumerate(image_shapes):
            boxes, scores = [], []
            levels = zip(
                head_outputs["cls_logits"], head_outputs["bbox_regression"], anchors[index], strict=True
            )
            for logits, regression, level_anchors in levels:
                level_scores = torch.sigmoid(logits[index])
                top = (
                    level_scores.max(dim=1).values.topk(min(self.topk_candidates, len(level_scores))).indices
                )
                decoded = self.box_coder.decode_single(regression[index][top], level_anchors[top])
                boxes.append(box_ops.clip_boxes_to_image(decoded, image_shape))
                scores.append(level_scores[top])
            candidate, label = torch.where(torch.cat(scores) > self.score_thresh)
            image_boxes, image_scores = torch.cat(boxes)[candidate], torch.cat(scores)[candidate, label]
            keep = box_ops.batched_nms(image_boxes, image_scores, label, self.nms_thresh)
            keep = keep[: self.detections_per_img]
            detections.append(
                {"boxes": image_boxes[keep], "scores": image_scores[keep], "labels": label[keep]}
            )
        return detections


class RetinaNetModel(TaskModel):
    """The detector; `backbone` and `neck` are views into it (the backbone, its pyramid and the FPN)."""

    def __init__(self, backbone: Backbone, num_classes: int, head: RetinaNetHeadConfig) -> None:
        super().__init__()
        if head.anchor_sizes is not None and len(head.anchor_sizes) != len(FPN_STAGES) + 2:
            raise UserError(
                f"head.anchor_sizes needs one base size per FPN level ({len(FPN_STAGES) + 2}: P3-P7), "
                f"got {list(head.anchor_sizes)}."
            )
        if head.group_norm and head.fpn_channels % GROUPS:
            raise UserError(
                f"head.group_norm splits the head's {head.fpn_channels} channels into {GROUPS} groups: set "
                f"head.fpn_channels to a multiple of {GROUPS}, or head.group_norm=false."
            )
        fpn = retinanet_fpn(backbone, head)
        anchors = anchor_generator(list(head.anchor_sizes or TORCHVISION_ANCHOR_SIZES), head.mmdet_anchors)
        detector = MmdetRetinaNet if head.mmdet_candidates else RetinaNet
        self.detector = detector(
            fpn,
            num_classes=num_classes,
            min_size=tuple(head.min_size),
            max_size=head.max_size,
            image_mean=IMAGENET_MEAN,
            image_std=IMAGENET_STD,
            anchor_generator=anchors,
            head=Float32RetinaNetHead(
                fpn.out_channels,
                anchors.num_anchors_per_location()[0],
                num_classes,
                norm_layer=partial(nn.GroupNorm, GROUPS) if head.group_norm else None,
            ),
            detections_per_img=100,
        )

    @property
    def backbone(self) -> Backbone:
        return self.detector.backbone.body.backbone

    @property
    def neck(self) -> nn.Module:
        return self.detector.backbone.neck()

    def forward(self, images: list[torch.Tensor], targets: list[Target]) -> torch.Tensor:
        """The sum of the focal classification and L1 box-regression losses."""
        shifted = [{"boxes": t["boxes"], "labels": t["labels"] - 1} for t in targets]
        return sum(self.detector(images, shifted).values())

    def predict(self, images: list[torch.Tensor]) -> list[Target]:
        """Per image: `boxes` (N, 4) xyxy in input pixels, `scores` (N,), `labels` (N,) in 1..K."""
        return [{**d, "labels": d["labels"] + 1} for d in self.detector(images)]


def retinanet_head(backbone: Backbone, num_classes: int, cfg: Config) -> RetinaNetModel:
    """`head=retinanet` (registered in `peft_bench.tasks`, with `FPN_STAGES`)."""
    return RetinaNetModel(backbone, num_classes, cfg.head)
