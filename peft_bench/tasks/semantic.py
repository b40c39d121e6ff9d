"""Semantic segmentation: UperNet on the backbone's four pyramid levels (`peft_bench.models.segmenter`); mIoU.

Config: for ADE20K, `data.image_size` is the side of the training crops (None: 512) and the resize
scale is `head.max_size` (long side cap) by `head.min_size` (short side, a single value); for the
embedded `shapes_seg`, `data.image_size` is the side of the generated scenes (None: the backbone's).
"""

from __future__ import annotations

from peft_bench.backbones.base import Backbone
from peft_bench.config import Config, UperNetHeadConfig
from peft_bench.data.ade20k import ADE20K_CROP, build_ade20k_data
from peft_bench.data.base import TaskData
from peft_bench.data.embedded import build_scene_segmentation, scene_size
from peft_bench.errors import UserError
from peft_bench.metrics.miou import SegmentationEvaluator, miou_scores
from peft_bench.models.segmenter import UperNetSegmenter
from peft_bench.tasks.base import register_dataset, register_head, register_task

register_task(
    "semantic",
    main_metric="miou",
    evaluator=lambda data, device: SegmentationEvaluator(data.num_classes),
    score=miou_scores,
    per_sample="intersection",
)


@register_head("upernet", task="semantic", config=UperNetHeadConfig, stages=(0, 1, 2, 3))
def upernet_head(backbone: Backbone, num_classes: int, cfg: Config) -> UperNetSegmenter:
    head = cfg.head
    return UperNetSegmenter(
        backbone,
        num_classes,
        channels=head.channels,
        aux_weight=head.aux_weight,
        inference=head.inference,
        slide_crop=head.slide_crop,
        slide_stride=head.slide_stride,
        norm_group=head.norm_group,
    )


@register_dataset("ade20k", task="semantic")
def ade20k(cfg: Config) -> TaskData:
    if len(cfg.head.min_size) != 1:
        raise UserError(
            f"ADE20K takes one head.min_size (the short side of its scale), got {cfg.head.min_size}."
        )
    scale = (cfg.head.max_size, cfg.head.min_size[0])
    return build_ade20k_data(cfg.data, scale, crop=cfg.data.image_size or ADE20K_CROP)


@register_dataset("shapes_seg", task="semantic")
def shapes_seg(cfg: Config) -> TaskData:
    return build_scene_segmentation(cfg.data, scene_size(cfg))
