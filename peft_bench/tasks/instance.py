"""Instance segmentation: Cascade Mask R-CNN (or Mask R-CNN) on a backbone + FPN
(`peft_bench.models.mask_rcnn`); COCO box and mask mAP."""

from __future__ import annotations

from peft_bench.backbones.base import Backbone
from peft_bench.config import Config, MaskRCNNHeadConfig
from peft_bench.data.base import TaskData
from peft_bench.data.coco import build_coco_data
from peft_bench.data.embedded import build_scene_instance_data, scene_size
from peft_bench.metrics.coco import InstanceEvaluator, instance_scores
from peft_bench.models.mask_rcnn import MMDET_BUDGET, InstanceSegmentationModel, ProposalBudget
from peft_bench.tasks.base import ModelBuilder, register_dataset, register_head, register_task

# The embedded scenes hold 1-3 objects in 128 px: a small budget keeps CPU steps short (the mask
# heads run on every detection, three times in the cascade).
BUDGETS = {"shapes_inst": ProposalBudget((256, 256), (128, 100), roi_samples=64, detections=20)}

register_task(
    "instance",
    main_metric="ap_mask",
    evaluator=lambda data, device: InstanceEvaluator(),
    score=instance_scores,
    per_sample="box.positives",
)


def detector(cascade: bool) -> ModelBuilder:
    """The builder of Mask R-CNN, with the cascade's RoI heads or not."""

    def build(backbone: Backbone, num_classes: int, cfg: Config) -> InstanceSegmentationModel:
        budget = BUDGETS.get(cfg.data.name, MMDET_BUDGET)
        return InstanceSegmentationModel(backbone, num_classes, cfg.head, budget, cascade)

    return build


for name, cascade in (("mask_rcnn", False), ("cascade_mask_rcnn", True)):
    register_head(name, task="instance", config=MaskRCNNHeadConfig, stages=(0, 1, 2, 3))(detector(cascade))


@register_dataset("coco", task="instance")
def coco(cfg: Config) -> TaskData:
    return build_coco_data(cfg.data)


@register_dataset("shapes_inst", task="instance")
def shapes_inst(cfg: Config) -> TaskData:
    return build_scene_instance_data(cfg.data, scene_size(cfg))
