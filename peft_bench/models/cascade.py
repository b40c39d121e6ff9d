"""Cascade R-CNN (Cai & Vasconcelos, 2018) box stages on torchvision's Mask R-CNN RoI heads.

torchvision has no cascade, so `CascadeRoIHeads` replaces a `MaskRCNN`'s `roi_heads`, as mmdet's
`cascade_mask_rcnn_r50_fpn` config: three stages, each with its own box head, class-agnostic box
predictor, IoU threshold (0.5, 0.6, 0.7), box coding weights ((10, 10, 5, 5), (20, 20, 10, 10),
(30, 30, 15, 15)), loss weight (1, 0.5, 0.25) and mask head.

Training: stage 1 samples RoIs from the RPN proposals plus the ground-truth boxes; stage t > 1 from
the boxes that stage t - 1 regressed from its own sampled RoIs (detached, clipped to the image,
without those that were ground-truth boxes) plus the ground-truth boxes again, as mmdet does. Each
stage's mask head learns on the positives of its own stage. Inference: each stage refines the boxes
of the previous one; the class logits of the three stages are averaged (mmdet averages the raw
`cls_score`, then applies the softmax), the boxes are the last stage's regression, followed by
torchvision's per-class score threshold and NMS; the mask probabilities of the three mask heads on
the final boxes are averaged, as mmdet's cascade merges them.

Box heads, two kinds (`head.box_head`):

* `shared2fc`, mmdet's default cascade: two shared FC layers of 1024 (`head.box_fc_channels`;
  torchvision's `TwoMLPHead`),
  one class-agnostic box delta per RoI, torchvision's smooth-L1 loss on the deltas (beta 1/9 where
  mmdet's cascade uses beta 1);
* `convfc`, the Mona COCO config's (`cascade_mask_swin_base_3x_coco_sample_1_bs_16_*.py`): mmdet's
  `ConvFCBBoxHead` with four shared 3x3 convs of 256 (BatchNorm, ReLU) and one FC of 1024,
  class-specific deltas (`reg_class_agnostic=False`) and the GIoU loss x10 on the decoded boxes
  (`reg_decoded_bbox=True`), summed over the positives and divided by the sampled RoIs (mmdet's
  `avg_factor`). A stage then refines each RoI with the deltas of its class: the ground truth's in
  training (the predicted one for negatives), the stage's own arg-max over the object classes at test
  time, as mmdet's `refine_bboxes` and `regress_by_class` do.

The RoI features come from torchvision's `MultiScaleRoIAlign`, or with `head.mmcv_roi_align` from
`MmcvRoIAlign`: mmcv's RoIAlign (`aligned=True`, `sampling_ratio=0`) with mmdet's level mapping.
The mask loss is torchvision's `maskrcnn_loss`; with mmcv's RoIAlign, mmdet's (`mmdet_mask_loss`), whose
targets mmcv's RoIAlign crops from the ground-truth masks and binarises at 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import (
    RoIHeads,
    fastrcnn_loss,
    maskrcnn_inference,
    maskrcnn_loss,
)
from torchvision.ops import MultiScaleRoIAlign, generalized_box_iou_loss, roi_align
from torchvision.ops import boxes as box_ops

from peft_bench.config import BoxHead
from peft_bench.models.roi_align import roi_align as small_map_roi_align

STAGE_IOUS = (0.5, 0.6, 0.7)
STAGE_BOX_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))
STAGE_LOSS_WEIGHTS = (1.0, 0.5, 0.25)
FC_CHANNELS = 1024  # the width of the FC layers of each box head (mmdet's `fc_out_channels`)
CONVFC_CHANNELS = 256  # the width of the ConvFC head's four convolutions
GIOU_LOSS_WEIGHT = 10.0
ROI_SIZE = 7

Boxes = list[torch.Tensor]


class BoxPredictor(nn.Module):
    """Class logits (background included, at 0) and box deltas: one per RoI shared by all classes
    (mmdet's `reg_class_agnostic`), or one per object class. Initialised as mmdet's `BBoxHead`
    (normal, std 0.01 for the classifier and 0.001 for the regressor). The outputs are float32 even
    under autocast: torchvision's `BoxCoder` decodes in the dtype of the deltas, and the next stage's
    RoIs must not be rounded to bfloat16 (mmdet's `force_fp32` does the same)."""

    def __init__(self, in_channels: int, num_classes: int, class_specific: bool = False) -> None:
        super().__init__()
        self.class_specific = class_specific
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, 4 * (num_classes - 1) if class_specific else 4)
        for layer, std in ((self.cls_score, 0.01), (self.bbox_pred, 0.001)):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.flatten(start_dim=1)
        return self.cls_score(x).float(), self.bbox_pred(x).float()

    def deltas_of(self, deltas: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N, 4): each RoI's deltas for its label in 1..K (class-specific), or the shared ones."""
        if not self.class_specific:
            return deltas
        columns = 4 * (labels.clamp(min=1) - 1)[:, None] + torch.arange(4, device=deltas.device)
        return deltas.gather(1, columns)

    def per_class(self, deltas: torch.Tensor, num_classes: int) -> torch.Tensor:
        """(N, 4 * num_classes), background first: the layout torchvision's post-processing reads."""
        if not self.class_specific:
            return deltas.repeat(1, num_classes)
        return torch.cat([deltas.new_zeros(len(deltas), 4), deltas], dim=1)


class ConvFCBoxHead(nn.Sequential):
    """mmdet's `ConvFCBBoxHead(num_shared_convs=4, num_shared_fcs=1)` with a norm: four 3x3 convs
    (no bias, BatchNorm, ReLU; kaiming-normal, fan-out, as mmcv's `ConvModule`) on the RoI map, then
    one FC of `fc_channels` (xavier-uniform, as mmdet inits its shared FCs) with a ReLU."""

    def __init__(self, in_channels: int, roi_size: int = ROI_SIZE, fc_channels: int = FC_CHANNELS) -> None:
        layers: list[nn.Module] = []
        for index in range(4):
            conv = nn.Conv2d(
                in_channels if index == 0 else CONVFC_CHANNELS, CONVFC_CHANNELS, 3, padding=1, bias=False
            )
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            layers += [conv, nn.BatchNorm2d(CONVFC_CHANNELS), nn.ReLU(inplace=True)]
        fc = nn.Linear(CONVFC_CHANNELS * roi_size * roi_size, fc_channels)
        nn.init.xavier_uniform_(fc.weight)
        nn.init.zeros_(fc.bias)
        super().__init__(*layers, nn.Flatten(), fc, nn.ReLU(inplace=True))


class MmcvRoIAlign(MultiScaleRoIAlign):
    """mmdet's `SingleRoIExtractor` with mmcv's `RoIAlign`: the level of a box is
    floor(log2(sqrt(area) / 56)) clamped to the levels, and each box is pooled from its level with
    `aligned=True` (pixel centres at +0.5, mmcv's default) and adaptive sampling
    (`sampling_ratio=0`); torchvision's `MultiScaleRoIAlign` aligns no half pixel. A drop-in for it
    (torchvision's detectors accept only its subclasses). Small CPU maps are pooled as matrix
    products (`peft_bench.models.roi_align`), the same numbers at a fraction of the kernel's time.

    It pools in float32 at float32 RoIs whatever the maps' dtype, as torchvision's `roi_align` does
    under autocast (and its CPU kernel has no bf16): bf16 RoIs would put a box's corners on a 4 px
    grid between 512 and 1024 px, an 8 px one above. The pooled features keep the maps' dtype."""

    def __init__(
        self, featmap_names: Sequence[str], output_size: int, strides: Sequence[int], finest_scale: int = 56
    ) -> None:
        super().__init__(list(featmap_names), output_size, sampling_ratio=0)
        self.strides = tuple(strides)
        self.finest_scale = finest_scale

    def levels(self, rois: torch.Tensor) -> torch.Tensor:
        scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
        levels = torch.floor(torch.log2(scale / self.finest_scale + 1e-6))
        return levels.clamp(0, len(self.strides) - 1).long()

    def forward(
        self, features: dict[str, torch.Tensor], boxes: Boxes, image_shapes: list[tuple[int, int]]
    ) -> torch.Tensor:
        maps = [features[name] for name in self.featmap_names]
        rois = torch.cat([torch.cat([b.new_full((len(b), 1), i), b], dim=1) for i, b in enumerate(boxes)])
        levels = self.levels(rois)
        pooled = maps[0].new_zeros((len(rois), maps[0].shape[1], *self.output_size))
        for level, (feature, stride) in enumerate(zip(maps, self.strides, strict=True)):
            index = torch.where(levels == level)[0]
            level_rois = rois[index].float()
            pooled[index] = small_map_roi_align(
                feature.float(), level_rois, self.output_size, 1.0 / stride, sampling_ratio=0, aligned=True
            ).to(pooled.dtype)
        return pooled


def mmdet_mask_targets(
    gt_masks: torch.Tensor, rois: torch.Tensor, matched: torch.Tensor, size: int
) -> torch.Tensor:
    """Each RoI's target: its ground-truth mask cropped by mmcv's RoIAlign (aligned, adaptive sampling)
    and binarised at 0.5, as mmdet 2.x's `BitmapMasks.crop_and_resize`; torchvision's
    `project_masks_on_boxes` crops without the half-pixel alignment and keeps the soft values."""
    boxes = torch.cat([matched[:, None].to(rois), rois], dim=1)
    masks = gt_masks[:, None].to(rois)
    cropped = roi_align(masks, boxes, (size, size), 1.0, sampling_ratio=0, aligned=True)[:, 0]
    return (cropped >= 0.5).to(rois.dtype)


def mmdet_mask_loss(
    logits: torch.Tensor, rois: Boxes, gt_masks: Boxes, gt_labels: Boxes, matched: Boxes
) -> torch.Tensor:
    """mmdet's mask loss: the mean binary cross-entropy of each positive RoI's mask of its class
    against `mmdet_mask_targets`."""
    labels = torch.cat([label[m] for label, m in zip(gt_labels, matched, strict=True)])
    targets = [
        mmdet_mask_targets(masks, r, m, logits.shape[-1])
        for masks, r, m in zip(gt_masks, rois, matched, strict=True)
    ]
    targets = torch.cat(targets)
    if targets.numel() == 0:
        return logits.sum() * 0
    return F.binary_cross_entropy_with_logits(
        logits[torch.arange(len(labels), device=labels.device), labels], targets
    )


class CascadeStage(nn.Module):
    """One cascade stage: its heads, the IoU at which its RoIs count as positive, its box coding,
    the weight of its losses, and its box loss: torchvision's smooth L1 on the deltas, or (with a
    `giou_loss_weight`) the GIoU loss on the decoded boxes."""

    def __init__(
        self,
        box_head: nn.Module,
        box_predictor: nn.Module,
        iou_threshold: float,
        box_weights: tuple[float, float, float, float],
        loss_weight: float,
        mask_head: nn.Module | None = None,
        mask_predictor: nn.Module | None = None,
        giou_loss_weight: float | None = None,
    ) -> None:
        super().__init__()
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.mask_head = mask_head
        self.mask_predictor = mask_predictor
        # mmdet's MaxIoUAssigner with pos_iou_thr = neg_iou_thr = min_pos_iou = iou_threshold.
        self.matcher = det_utils.Matcher(iou_threshold, iou_threshold, allow_low_quality_matches=False)
        self.box_coder = det_utils.BoxCoder(box_weights)
        self.loss_weight = loss_weight
        self.giou_loss_weight = giou_loss_weight

    def box_losses(
        self,
        class_logits: torch.Tensor,
        deltas: torch.Tensor,
        rois: Boxes,
        labels: Boxes,
        regression_targets: Boxes,
        matched_boxes: Boxes,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(classification, box) losses of the stage's sampled RoIs (see the class docstring)."""
        if self.giou_loss_weight is None:
            per_class = self.box_predictor.per_class(deltas, class_logits.shape[1])
            return fastrcnn_loss(class_logits, per_class, labels, regression_targets)
        all_labels = torch.cat(labels)
        positive = torch.where(all_labels > 0)[0]
        chosen = self.box_predictor.deltas_of(deltas[positive], all_labels[positive])
        boxes = self.box_coder.decode_single(chosen, torch.cat(rois)[positive])
        giou = generalized_box_iou_loss(boxes, torch.cat(matched_boxes)[positive], reduction="sum")
        loss_box = self.giou_loss_weight * giou / max(1, len(all_labels))  # mmdet's avg_factor: all RoIs
        return F.cross_entropy(class_logits, all_labels), loss_box

    def assign(self, rois: Boxes, gt_boxes: Boxes, gt_labels: Boxes) -> tuple[Boxes, Boxes]:
        """Per image, the matched ground-truth index of each RoI and its label (0: background),
        by this stage's IoU threshold; an image without objects has background RoIs only."""
        matched_idxs, labels = [], []
        for rois_in_image, boxes, classes in zip(rois, gt_boxes, gt_labels, strict=True):
            if boxes.numel() == 0:
                matched = torch.zeros(len(rois_in_image), dtype=torch.int64, device=rois_in_image.device)
                matched_idxs.append(matched)
                labels.append(torch.zeros_like(matched))
                continue
            matches = self.matcher(box_ops.box_iou(boxes, rois_in_image))
            matched = matches.clamp(min=0)
            labels.append(torch.where(matches >= 0, classes[matched], 0).to(torch.int64))
            matched_idxs.append(matched)
        return matched_idxs, labels


class CascadeRoIHeads(RoIHeads):
    """torchvision's `RoIHeads` run as a cascade of `stages` (see the module docstring).

    The inherited `box_coder` is the last stage's (torchvision's `postprocess_detections` decodes
    with it) and `proposal_matcher` the first stage's; each stage otherwise uses its own.
    """

    def __init__(
        self,
        box_roi_pool: MultiScaleRoIAlign,
        stages: Sequence[CascadeStage],
        mask_roi_pool: MultiScaleRoIAlign | None = None,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
    ) -> None:
        with_masks = [s.mask_head is not None and s.mask_predictor is not None for s in stages]
        if mask_roi_pool is not None and not all(with_masks):
            raise ValueError("with a mask_roi_pool, every stage needs a mask head and a mask predictor")
        super().__init__(
            box_roi_pool,
            None,
            None,
            stages[0].matcher.high_threshold,
            stages[0].matcher.low_threshold,
            batch_size_per_image,
            positive_fraction,
            stages[-1].box_coder.weights,
            score_thresh,
            nms_thresh,
            detections_per_img,
            mask_roi_pool=mask_roi_pool,
        )
        self.stages = nn.ModuleList(stages)
        self.proposal_matcher = stages[0].matcher
        self.box_coder = stages[-1].box_coder

    def forward(
        self,
        features: dict[str, torch.Tensor],
        proposals: Boxes,
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("targets are needed in training")
            return [], self.losses(features, proposals, image_shapes, targets)
        return self.detect(features, proposals, image_shapes), {}

    # ---- training ----------------------------------------------------------------------------
    def losses(
        self,
        features: dict[str, torch.Tensor],
        proposals: Boxes,
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]],
    ) -> dict[str, torch.Tensor]:
        """The weighted losses of every stage, keyed `s<stage>.<loss>` as mmdet logs them."""
        self.check_targets(targets)
        losses: dict[str, torch.Tensor] = {}
        for index, stage in enumerate(self.stages):
            rois, matched_idxs, labels, regression_targets, matched_boxes, from_gt = self.sample(
                stage, proposals, targets
            )
            class_logits, deltas = self.box_outputs(stage, features, rois, image_shapes)
            loss_cls, loss_box = stage.box_losses(
                class_logits, deltas, rois, labels, regression_targets, matched_boxes
            )
            losses[f"s{index}.loss_classifier"] = stage.loss_weight * loss_cls
            losses[f"s{index}.loss_box_reg"] = stage.loss_weight * loss_box
            if self.mask_roi_pool is not None:
                loss_mask = self.mask_loss(stage, features, rois, matched_idxs, labels, image_shapes, targets)
                losses[f"s{index}.loss_mask"] = stage.loss_weight * loss_mask
            if index + 1 < len(self.stages):
                classes = refinement_classes(class_logits, torch.cat(labels))
                chosen = stage.box_predictor.deltas_of(deltas.detach(), classes)
                refined = self.refine(stage, chosen, rois, image_shapes)
                proposals = [boxes[~gt] for boxes, gt in zip(refined, from_gt, strict=True)]
        return losses

    def sample(
        self, stage: CascadeStage, proposals: Boxes, targets: list[dict[str, torch.Tensor]]
    ) -> tuple[Boxes, Boxes, Boxes, Boxes, Boxes, Boxes]:
        """A stage's training RoIs: `proposals` plus the ground-truth boxes, labelled by the stage's
        matcher and subsampled by the shared sampler. Returns, per image, the RoIs, their matched
        ground-truth indices, labels, regression targets (in the stage's box coding), matched
        ground-truth boxes and whether each RoI is a ground-truth box."""
        dtype = proposals[0].dtype
        gt_boxes = [t["boxes"].to(dtype) for t in targets]
        gt_labels = [t["labels"] for t in targets]
        counts = [len(p) for p in proposals]
        candidates = self.add_gt_proposals(proposals, gt_boxes)
        matched_idxs, labels = stage.assign(candidates, gt_boxes, gt_labels)
        rois, matched, sampled_labels, matched_boxes, from_gt = [], [], [], [], []
        for i, kept in enumerate(self.subsample(labels)):
            rois.append(candidates[i][kept])
            matched.append(matched_idxs[i][kept])
            sampled_labels.append(labels[i][kept])
            from_gt.append(kept >= counts[i])
            boxes = gt_boxes[i] if gt_boxes[i].numel() else gt_boxes[i].new_zeros((1, 4))
            matched_boxes.append(boxes[matched[-1]])
        regression_targets = stage.box_coder.encode(matched_boxes, rois)
        return rois, matched, sampled_labels, list(regression_targets), matched_boxes, from_gt

    def mask_loss(
        self,
        stage: CascadeStage,
        features: dict[str, torch.Tensor],
        rois: Boxes,
        matched_idxs: Boxes,
        labels: Boxes,
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]],
    ) -> torch.Tensor:
        """The mask loss of this stage's mask head on this stage's positive RoIs: mmdet's where the RoIs
        are pooled by mmcv's RoIAlign, else torchvision's."""
        positive = [torch.where(label > 0)[0] for label in labels]
        mask_rois = [r[p] for r, p in zip(rois, positive, strict=True)]
        mask_matched = [m[p] for m, p in zip(matched_idxs, positive, strict=True)]
        logits = self.mask_logits(stage, features, mask_rois, image_shapes)
        gt_masks = [t["masks"] for t in targets]
        gt_labels = [t["labels"] for t in targets]
        loss = mmdet_mask_loss if isinstance(self.mask_roi_pool, MmcvRoIAlign) else maskrcnn_loss
        return loss(logits, mask_rois, gt_masks, gt_labels, mask_matched)

    # ---- shared ------------------------------------------------------------------------------
    def box_outputs(
        self, stage: CascadeStage, features: dict[str, torch.Tensor], rois: Boxes, image_shapes
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(class logits (N, classes), agnostic deltas (N, 4)) of a stage for all RoIs of the batch."""
        return stage.box_predictor(stage.box_head(self.box_roi_pool(features, rois, image_shapes)))

    def mask_logits(
        self, stage: CascadeStage, features: dict[str, torch.Tensor], rois: Boxes, image_shapes
    ) -> torch.Tensor:
        return stage.mask_predictor(stage.mask_head(self.mask_roi_pool(features, rois, image_shapes)))

    @staticmethod
    def refine(
        stage: CascadeStage, deltas: torch.Tensor, rois: Boxes, image_shapes: list[tuple[int, int]]
    ) -> Boxes:
        """The boxes a stage regresses from its RoIs, clipped to each image: the next stage's RoIs."""
        boxes = stage.box_coder.decode(deltas, rois).reshape(-1, 4)
        per_image = boxes.split([len(r) for r in rois])
        return [box_ops.clip_boxes_to_image(b, s) for b, s in zip(per_image, image_shapes, strict=True)]

    # ---- inference ---------------------------------------------------------------------------
    def detect(
        self, features: dict[str, torch.Tensor], proposals: Boxes, image_shapes: list[tuple[int, int]]
    ) -> list[dict[str, torch.Tensor]]:
        stage_logits = []
        rois = proposals
        for index, stage in enumerate(self.stages):
            class_logits, deltas = self.box_outputs(stage, features, rois, image_shapes)
            stage_logits.append(class_logits)
            if index + 1 < len(self.stages):
                chosen = stage.box_predictor.deltas_of(deltas, refinement_classes(class_logits))
                rois = self.refine(stage, chosen, rois, image_shapes)
        class_logits = torch.stack(stage_logits).mean(0)
        per_class = self.stages[-1].box_predictor.per_class(deltas, class_logits.shape[1])
        boxes, scores, labels = self.postprocess_detections(class_logits, per_class, rois, image_shapes)
        results = [
            {"boxes": b, "labels": c, "scores": s} for b, s, c in zip(boxes, scores, labels, strict=True)
        ]
        if self.mask_roi_pool is not None:
            per_stage = [
                maskrcnn_inference(self.mask_logits(stage, features, boxes, image_shapes), labels)
                for stage in self.stages
            ]
            for result, stage_probs in zip(results, zip(*per_stage, strict=True), strict=True):
                result["masks"] = torch.stack(stage_probs).mean(0)
        return results


def refinement_classes(class_logits: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """The class whose deltas refine each RoI: its label where it has an object's (training), else
    the stage's arg-max over the object classes (mmdet's `refine_bboxes`, `regress_by_class`)."""
    predicted = class_logits[:, 1:].argmax(dim=1) + 1
    return predicted if labels is None else torch.where(labels > 0, labels, predicted)


def shared2fc_head(channels: int, fc_channels: int = FC_CHANNELS) -> TwoMLPHead:
    """mmdet's `Shared2FCBBoxHead` body: two FC layers of `fc_channels` on 7x7 RoI maps of `channels`
    (torchvision's `TwoMLPHead`, the plain Mask R-CNN's box head too)."""
    return TwoMLPHead(channels * ROI_SIZE * ROI_SIZE, fc_channels)


def fcn_mask_head(channels: int, num_classes: int) -> tuple[MaskRCNNHeads, MaskRCNNPredictor]:
    """mmdet's `FCNMaskHead` on 14x14 RoI maps of `channels`: four 3x3 convolutions of `channels`, a
    deconvolution, and class-specific mask logits (`num_classes` counts the background)."""
    return MaskRCNNHeads(channels, (channels,) * 4, dilation=1), MaskRCNNPredictor(
        channels, channels, num_classes
    )


def mmdet_stages(
    channels: int,
    num_classes: int,
    masks: bool = True,
    box_head: BoxHead = BoxHead.shared2fc,
    fc_channels: int = FC_CHANNELS,
) -> list[CascadeStage]:
    """The three stages of mmdet's Cascade Mask R-CNN over `channels`-wide FPN maps, with the box
    heads of `box_head` (module docstring, FC layers `fc_channels` wide) on 7x7 RoI maps and
    `fcn_mask_head`s; `num_classes` counts the background."""
    convfc = BoxHead(box_head) is BoxHead.convfc
    return [
        CascadeStage(
            ConvFCBoxHead(channels, fc_channels=fc_channels)
            if convfc
            else shared2fc_head(channels, fc_channels),
            BoxPredictor(fc_channels, num_classes, class_specific=convfc),
            iou,
            weights,
            loss_weight,
            *(fcn_mask_head(channels, num_classes) if masks else (None, None)),
            giou_loss_weight=GIOU_LOSS_WEIGHT if convfc else None,
        )
        for iou, weights, loss_weight in zip(STAGE_IOUS, STAGE_BOX_WEIGHTS, STAGE_LOSS_WEIGHTS, strict=True)
    ]
