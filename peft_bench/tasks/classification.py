"""Image classification: pooled backbone features and a linear head; top-1 / top-5 accuracy."""

from __future__ import annotations

from peft_bench.backbones import image_size
from peft_bench.backbones.base import Backbone
from peft_bench.config import Config, LinearHeadConfig
from peft_bench.data.base import TaskData
from peft_bench.data.classification import CLASSIFICATION_DATASETS, build_classification_data
from peft_bench.metrics.accuracy import ClassificationEvaluator
from peft_bench.models.classifier import ClassificationModel
from peft_bench.tasks.base import register_dataset, register_head, register_task

register_task(
    "classification",
    main_metric="top1",
    evaluator=lambda data, device: ClassificationEvaluator(data.num_classes, device),
)


@register_head("linear", task="classification", config=LinearHeadConfig)
def linear_head(backbone: Backbone, num_classes: int, cfg: Config) -> ClassificationModel:
    return ClassificationModel(backbone, num_classes, cfg.trainer.label_smoothing, cfg.head.init)


def classification_data(cfg: Config) -> TaskData:
    return build_classification_data(cfg.data, img_size=image_size(cfg.backbone), seed=cfg.data.split_seed)


for name in CLASSIFICATION_DATASETS:
    register_dataset(name, task="classification")(classification_data)
