"""Instance segmentation's datasets and evaluator (COCO box and mask mAP), registered in
`peft_bench.tasks`; its heads are Cascade Mask R-CNN and Mask R-CNN on a backbone + FPN
(`peft_bench.models.mask_rcnn`)."""

from __future__ import annotations

import torch

from peft_bench.config import Config
from peft_bench.data.base import TaskData
from peft_bench.data.coco import build_coco_data
from peft_bench.data.embedded import build_scene_instance_data, scene_size
from peft_bench.metrics.coco import InstanceEvaluator


def evaluator(data: TaskData, device: torch.device) -> InstanceEvaluator:
    return InstanceEvaluator()


def coco(cfg: Config) -> TaskData:
    return build_coco_data(cfg.data)


def shapes_inst(cfg: Config) -> TaskData:
    return build_scene_instance_data(cfg.data, scene_size(cfg))
