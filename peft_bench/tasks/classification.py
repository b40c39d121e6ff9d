"""Image classification's datasets and evaluator (top-1 / top-5 accuracy), registered in
`peft_bench.tasks`; its head is `peft_bench.models.classifier.linear_head`."""

from __future__ import annotations

import torch

from peft_bench.backbones import image_size
from peft_bench.config import Config
from peft_bench.data.base import TaskData
from peft_bench.data.classification import build_classification_data
from peft_bench.metrics.accuracy import ClassificationEvaluator


def evaluator(data: TaskData, device: torch.device) -> ClassificationEvaluator:
    return ClassificationEvaluator(data.num_classes)


def classification_data(cfg: Config) -> TaskData:
    return build_classification_data(cfg.data, img_size=image_size(cfg.backbone), seed=cfg.data.split_seed)
