"""Object detection: RetinaNet on a backbone + FPN (`peft_bench.models.retinanet`), VOC mAP at IoU 0.5."""

from __future__ import annotations

from peft_bench.backbones.base import Backbone
from peft_bench.config import Config, RetinaNetHeadConfig
from peft_bench.data.base import TaskData
from peft_bench.data.embedded import build_scene_detection_data, scene_size
from peft_bench.data.voc import build_voc_data
from peft_bench.metrics.voc_map import VOCEvaluator, voc_scores
from peft_bench.models.retinanet import FPN_STAGES, RetinaNetModel
from peft_bench.tasks.base import register_dataset, register_head, register_task

register_task(
    "detection",
    main_metric="ap50",
    evaluator=lambda data, device: VOCEvaluator(data.num_classes),
    score=voc_scores,
    per_sample="positives",
)


@register_head("retinanet", task="detection", config=RetinaNetHeadConfig, stages=FPN_STAGES)
def retinanet_head(backbone: Backbone, num_classes: int, cfg: Config) -> RetinaNetModel:
    return RetinaNetModel(backbone, num_classes, cfg.head)


@register_dataset("voc", task="detection")
def voc(cfg: Config) -> TaskData:
    return build_voc_data(cfg.data)


@register_dataset("shapes_det", task="detection")
def shapes_det(cfg: Config) -> TaskData:
    """Generated at the test-time short side unless `data.image_size` says otherwise."""
    return build_scene_detection_data(cfg.data, scene_size(cfg, min(cfg.head.min_size)))
