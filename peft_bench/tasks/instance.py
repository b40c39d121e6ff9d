"""Instance segmentation: Cascade Mask R-CNN (or Mask R-CNN) on a Swin + FPN; COCO box and mask mAP.

The detector is torchvision's `MaskRCNN` as mmdet's Swin configs build it: an FPN over the four Swin
stages with a max-pooled fifth level, one anchor size per level with ratios 0.5 / 1 / 2, and images
resized by torchvision's `GeneralizedRCNNTransform` (a random `head.min_size` per image in training,
the last one in evaluation, the longer side capped at `head.max_size`), normalised with the ImageNet
statistics from [0, 1] inputs. `head.name=cascade_mask_rcnn` swaps its RoI heads for the three
cascade stages of `peft_bench.models.cascade`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import nn
from torchmetrics.detection import MeanAveragePrecision
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from peft_bench.backbones.swin import SWIN_SPECS, SwinBackbone
from peft_bench.config import Config, HeadConfig
from peft_bench.data.coco import build_coco_data, build_scene_instance_data
from peft_bench.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from peft_bench.errors import UserError
from peft_bench.models.cascade import (
    REPRESENTATION,
    CascadeRoIHeads,
    MmcvRoIAlign,
    fcn_mask_head,
    mmdet_stages,
)
from peft_bench.models.rpn import MmdetRPN
from peft_bench.tasks.base import Task, TaskData, TaskModel
from peft_bench.tasks.pyramid import PyramidBackbone

HEADS = ("mask_rcnn", "cascade_mask_rcnn")
ANCHOR_SIZES = (32, 64, 128, 256, 512)  # mmdet's scale 8 at strides 4-64 (torchvision's default)
ASPECT_RATIOS = (0.5, 1.0, 2.0)
MASK_THRESHOLD = 0.5  # mask probabilities above it belong to the instance (mmdet's mask_thr_binary)
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
# The embedded scenes hold 1-3 objects in 128 px: a small budget keeps CPU steps short (the mask
# heads run on every detection, three times in the cascade).
BUDGETS = {"shapes_inst": ProposalBudget((256, 256), (128, 100), roi_samples=64, detections=20)}


class Float32RPNHead(RPNHead):
    """torchvision's RPN head with float32 outputs. Under autocast, torchvision's `BoxCoder` decodes
    boxes in the dtype of the deltas, and bfloat16 coordinates lie 4 px apart at 800 px: box decoding
    and losses stay in float32, as mmdet keeps them (`force_fp32`)."""

    def forward(self, x: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits, deltas = super().forward(x)
        return [t.float() for t in logits], [t.float() for t in deltas]


class Float32BoxPredictor(FastRCNNPredictor):
    """torchvision's class-specific box predictor with float32 outputs (see `Float32RPNHead`)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores, deltas = super().forward(x)
        return scores.float(), deltas.float()


class SwinFPN(nn.Module):
    """The detector's backbone: normed Swin stage maps (strides 4-32) through an FPN of `channels`
    with a max-pooled fifth level (stride 64), keyed "0"-"3" and "pool" as torchvision expects."""

    def __init__(self, swin: SwinBackbone, channels: int) -> None:
        super().__init__()
        self.body = PyramidBackbone(swin, (0, 1, 2, 3))
        self.fpn = FeaturePyramidNetwork(self.body.in_channels, channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = channels

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.fpn(self.body(images))


def build_detector(
    swin: SwinBackbone, num_classes: int, head: HeadConfig, budget: ProposalBudget
) -> MaskRCNN:
    """torchvision's Mask R-CNN over `num_classes` object classes, with cascade heads if asked."""
    if head.name not in HEADS:
        raise UserError(
            f"Unknown instance segmentation head {head.name!r} (head.name): use {' or '.join(HEADS)}."
        )
    sizes = tuple(head.anchor_sizes or ANCHOR_SIZES)
    if len(sizes) != len(ANCHOR_SIZES):
        raise UserError(
            f"head.anchor_sizes needs one anchor size per FPN level, {len(ANCHOR_SIZES)} in all "
            f"(strides 4 to 64), got {list(sizes)}."
        )
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
        SwinFPN(swin, channels),
        min_size=tuple(head.min_size),
        max_size=head.max_size,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        rpn_anchor_generator=AnchorGenerator(tuple((s,) for s in sizes), (ASPECT_RATIOS,) * len(sizes)),
        rpn_head=Float32RPNHead(channels, len(ASPECT_RATIOS)),
        rpn_pre_nms_top_n_train=budget.rpn_pre_nms[0],
        rpn_pre_nms_top_n_test=budget.rpn_pre_nms[1],
        rpn_post_nms_top_n_train=budget.rpn_post_nms[0],
        rpn_post_nms_top_n_test=budget.rpn_post_nms[1],
        box_batch_size_per_image=budget.roi_samples,
        box_detections_per_img=budget.detections,
        box_predictor=Float32BoxPredictor(REPRESENTATION, classes),
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
    if head.name == "cascade_mask_rcnn":
        plain = detector.roi_heads
        detector.roi_heads = CascadeRoIHeads(
            plain.box_roi_pool,
            mmdet_stages(channels, classes, box_head=head.box_head),
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
        backbone: SwinBackbone,
        num_classes: int,
        head: HeadConfig,
        budget: ProposalBudget = MMDET_BUDGET,
    ) -> None:
        super().__init__()
        self.detector = build_detector(backbone, num_classes, head, budget)

    @property
    def backbone(self) -> SwinBackbone:  # nested in the detector: exposed, not registered twice
        return self.detector.backbone.body.swin

    @property
    def neck(self) -> nn.Module:
        return self.detector.backbone.fpn

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        losses = self.detector(images, targets)
        return torch.stack(list(losses.values())).sum()

    def predict(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """torchvision's detections: boxes, labels, scores and masks (N, 1, H, W) of probabilities."""
        return self.detector(images)


class InstanceEvaluator:
    """COCO mAP@[.5:.95] of boxes and masks (`ap_box`, `ap_mask`, percent) by torchmetrics over
    pycocotools (faster-coco-eval when installed), over the images of every DDP rank.

    torchmetrics' own sync gathers its per-image states one collective per image, which breaks when
    ranks hold different numbers of images (the eval shards do): the evaluator gathers the states
    itself. The states live on the CPU, where COCO evaluation runs.
    """

    BACKEND = "faster_coco_eval" if importlib.util.find_spec("faster_coco_eval") else "pycocotools"

    def __init__(self) -> None:
        self.metric = self.new_metric()

    def new_metric(self) -> MeanAveragePrecision:
        return MeanAveragePrecision(iou_type=("bbox", "segm"), backend=self.BACKEND, sync_on_compute=False)

    def reset(self) -> None:
        self.metric.reset()

    def update(
        self, predictions: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]]
    ) -> None:
        detections = [
            {
                "boxes": p["boxes"].float().cpu(),
                "scores": p["scores"].float().cpu(),
                "labels": p["labels"].cpu(),
                "masks": (p["masks"][:, 0] > MASK_THRESHOLD).cpu(),
            }
            for p in predictions
        ]
        truths = [
            {
                "boxes": t["boxes"].float().cpu(),
                "labels": t["labels"].cpu(),
                "masks": t["masks"].bool().cpu(),
                **({"iscrowd": t["iscrowd"].cpu()} if "iscrowd" in t else {}),
            }
            for t in targets
        ]
        self.metric.update(detections, truths)

    def compute(self) -> dict[str, float]:
        result = self.gathered().compute()
        return {"ap_box": 100.0 * result["bbox_map"].item(), "ap_mask": 100.0 * result["segm_map"].item()}

    def gathered(self) -> MeanAveragePrecision:
        """The metric over the images of all ranks (this rank's metric when not distributed)."""
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return self.metric
        shards: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(shards, self.metric.metric_state)
        merged = self.new_metric()
        for name in self.metric.metric_state:
            setattr(merged, name, [item for shard in shards for item in shard[name]])
        return merged


def _image_size(cfg: Config) -> int:
    """The side of the generated scenes: data.image_size, else the backbone's image size."""
    return cfg.data.image_size or cfg.backbone.img_size or SWIN_SPECS[cfg.backbone.name].img_size


BUILDERS: dict[str, Callable[[Config], TaskData]] = {
    "coco": lambda cfg: build_coco_data(cfg.data),
    "shapes_inst": lambda cfg: build_scene_instance_data(cfg.data, _image_size(cfg)),
}


class InstanceSegmentationTask(Task):
    name: ClassVar[str] = "instance"
    main_metric: ClassVar[str] = "ap_mask"
    dense: ClassVar[bool] = True

    def build_data(self, cfg: Config) -> TaskData:
        if cfg.data.name not in BUILDERS:
            known = ", ".join(BUILDERS)
            raise UserError(
                f"Unknown instance segmentation dataset {cfg.data.name!r} (data.name). Known: {known}."
            )
        return BUILDERS[cfg.data.name](cfg)

    def build_model(self, backbone: SwinBackbone, data: TaskData, cfg: Config) -> InstanceSegmentationModel:
        budget = BUDGETS.get(cfg.data.name, MMDET_BUDGET)
        return InstanceSegmentationModel(backbone, data.num_classes, cfg.head, budget)

    def build_evaluator(self, data: TaskData, device: torch.device) -> InstanceEvaluator:
        return InstanceEvaluator()
