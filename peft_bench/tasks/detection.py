"""Object detection's datasets and evaluator (VOC mAP at IoU 0.5), registered in `peft_bench.tasks`;
its head is RetinaNet on a backbone + FPN (`peft_bench.models.retinanet.retinanet_head`)."""

from __future__ import annotations

import torch

from peft_bench.config import Config
from peft_bench.data.base import TaskData
from peft_bench.data.embedded import build_scene_detection_data, scene_size
from peft_bench.data.voc import build_voc_data
from peft_bench.metrics.voc_map import VOCEvaluator


def evaluator(data: TaskData, device: torch.device) -> VOCEvaluator:
    return VOCEvaluator(data.num_classes)


def voc(cfg: Config) -> TaskData:
    return build_voc_data(cfg.data)


def shapes_det(cfg: Config) -> TaskData:
    """Generated at the test-time short side unless `data.image_size` says otherwise."""
    return build_scene_detection_data(cfg.data, scene_size(cfg, min(cfg.head.min_size)))
