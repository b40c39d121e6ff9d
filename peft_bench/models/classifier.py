"""Image classification: pooled backbone features and a linear head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peft_bench.backbones.base import Backbone
from peft_bench.config import Config, HeadInit
from peft_bench.engine.contract import TaskModel


class ClassificationModel(TaskModel):
    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        label_smoothing: float = 0.0,
        init: HeadInit = HeadInit.trunc_normal,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, num_classes)
        if HeadInit(init) is HeadInit.normal:  # mmcls's LinearClsHead: Normal(std=0.01), bias 0
            nn.init.normal_(self.head.weight, std=0.01)
        else:  # timm's `_init_weights` of its transformers
            nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.label_smoothing = label_smoothing

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.predict(images), targets, label_smoothing=self.label_smoothing)


def linear_head(backbone: Backbone, num_classes: int, cfg: Config) -> ClassificationModel:
    """`head=linear` (registered in `peft_bench.tasks`)."""
    return ClassificationModel(backbone, num_classes, cfg.trainer.label_smoothing, cfg.head.init)
