"""Semantic segmentation scores as mmsegmentation's IoUMetric: mIoU, mAcc and aAcc in percent.

Intersections and unions are accumulated over the whole split, not averaged per image: a
num_classes x num_classes confusion matrix (torchmetrics' bincount on the device), summed across
DDP ranks at compute. A class whose union is empty (absent from labels and predictions) has no
IoU and is left out of the mean, as mmseg's nanmean does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from peft_bench.data.targets import IGNORE_INDEX
from peft_bench.layers.maps import resize


def segmentation_scores(confmat: torch.Tensor) -> dict[str, float]:
    """mIoU, mAcc (mean per-class pixel accuracy) and aAcc (all pixels) from a confusion matrix
    whose rows are labels and columns predictions."""
    confmat = confmat.double()
    intersection = confmat.diagonal()
    label_area, predicted_area = confmat.sum(1), confmat.sum(0)
    union = label_area + predicted_area - intersection
    iou = intersection / union  # nan where the union is empty
    accuracy = intersection / label_area  # nan for a class absent from the labels
    return {
        "miou": 100.0 * iou.nanmean().item(),
        "macc": 100.0 * accuracy.nanmean().item(),
        "aacc": 100.0 * (intersection.sum() / label_area.sum()).item(),
    }


class SegmentationScores(MulticlassConfusionMatrix):
    """Accumulates label maps (any shape, integer class ids) against targets, `ignore_index`
    pixels left out; `compute` syncs across ranks and returns `segmentation_scores`."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__(num_classes, ignore_index=ignore_index, validate_args=False)

    def compute(self) -> dict[str, float]:  # type: ignore[override]
        return segmentation_scores(super().compute())


class SegmentationEvaluator:
    """mIoU, mAcc and aAcc over a split (`SegmentationScores`), each prediction's logits resized
    (bilinear) to its label map's original size before the argmax, as mmseg does."""

    def __init__(self, num_classes: int, device: torch.device) -> None:
        self.scores = SegmentationScores(num_classes).to(device)

    def reset(self) -> None:
        self.scores.reset()

    def update(self, predictions: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> None:
        for logits, target in zip(predictions, targets, strict=True):
            if logits.shape[-2:] != target.shape[-2:]:
                logits = resize(logits[None].float(), target.shape[-2:])[0]
            self.scores.update(logits.argmax(0), target.to(logits.device))

    def compute(self) -> dict[str, float]:
        return self.scores.compute()
