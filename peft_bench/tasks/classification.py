"""Image classification: pooled backbone features and a linear head; top-1 / top-5 accuracy."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from peft_bench.backbones.swin import SWIN_SPECS, SwinBackbone
from peft_bench.config import Config, HeadInit
from peft_bench.data.classification import build_classification_data
from peft_bench.tasks.base import Task, TaskData, TaskModel


class ClassificationModel(TaskModel):
    def __init__(
        self,
        backbone: SwinBackbone,
        num_classes: int,
        label_smoothing: float = 0.0,
        init: HeadInit = HeadInit.trunc_normal,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, num_classes)
        if HeadInit(init) is HeadInit.normal:  # mmcls's LinearClsHead: Normal(std=0.01), bias 0
            nn.init.normal_(self.head.weight, std=0.01)
        else:  # Swin's _init_weights
            nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.label_smoothing = label_smoothing

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.predict(images), targets, label_smoothing=self.label_smoothing)


class ClassificationEvaluator:
    """Top-1 and top-5 accuracy (micro: the fraction of images), synced across DDP ranks."""

    def __init__(self, num_classes: int, device: torch.device) -> None:
        self.metrics = MetricCollection(
            {
                "top1": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
                "top5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
            }
        ).to(device)

    def reset(self) -> None:
        self.metrics.reset()

    def update(self, predictions: torch.Tensor, targets: torch.Tensor) -> None:
        self.metrics.update(predictions.float(), targets)

    def compute(self) -> dict[str, float]:
        return {name: 100.0 * value.item() for name, value in self.metrics.compute().items()}


class ClassificationTask(Task):
    name: ClassVar[str] = "classification"
    main_metric: ClassVar[str] = "top1"

    def build_data(self, cfg: Config) -> TaskData:
        img_size = cfg.backbone.img_size or SWIN_SPECS[cfg.backbone.name].img_size
        return build_classification_data(cfg.data, img_size=img_size, seed=cfg.data.split_seed)

    def build_model(self, backbone: SwinBackbone, data: TaskData, cfg: Config) -> ClassificationModel:
        return ClassificationModel(backbone, data.num_classes, cfg.trainer.label_smoothing, cfg.head.init)

    def build_evaluator(self, data: TaskData, device: torch.device) -> ClassificationEvaluator:
        return ClassificationEvaluator(data.num_classes, device)
