"""Semantic segmentation's datasets and evaluator (mIoU), registered in `peft_bench.tasks`; its head is
UperNet on the backbone's four pyramid levels (`peft_bench.models.segmenter.upernet_head`).

Config: for ADE20K, `data.image_size` is the side of the training crops (None: 512) and the resize
scale is `head.max_size` (long side cap) by `head.min_size` (short side, a single value); for the
embedded `shapes_seg`, `data.image_size` is the side of the generated scenes (None: the backbone's).
"""

from __future__ import annotations

import torch

from peft_bench.config import Config
from peft_bench.data.ade20k import ADE20K_CROP, build_ade20k_data
from peft_bench.data.base import TaskData
from peft_bench.data.embedded import build_scene_segmentation, scene_size
from peft_bench.errors import UserError
from peft_bench.metrics.miou import SegmentationEvaluator


def evaluator(data: TaskData, device: torch.device) -> SegmentationEvaluator:
    return SegmentationEvaluator(data.num_classes)


def ade20k(cfg: Config) -> TaskData:
    if len(cfg.head.min_size) != 1:
        raise UserError(
            f"ADE20K takes one head.min_size (the short side of its scale), got {cfg.head.min_size}."
        )
    scale = (cfg.head.max_size, cfg.head.min_size[0])
    return build_ade20k_data(cfg.data, scale, crop=cfg.data.image_size or ADE20K_CROP)


def shapes_seg(cfg: Config) -> TaskData:
    return build_scene_segmentation(cfg.data, scene_size(cfg))
