"""Classification accuracy: top-1 and top-5 over a split, synced across DDP ranks."""

from __future__ import annotations

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy


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
        self.metrics.update(predictions.float(), targets.to(predictions.device))

    def compute(self) -> dict[str, float]:
        return {name: 100.0 * value.item() for name, value in self.metrics.compute().items()}
