"""Semantic segmentation scores as mmsegmentation's IoUMetric: mIoU, mAcc and aAcc in percent.

Intersections and unions are accumulated over the whole split, not averaged per image: per image,
the pixels of each class where prediction and label agree, that are labelled it and that are
predicted it (`ignore_index` pixels left out), summed over the images of all DDP ranks. A class
whose union is empty (absent from labels and predictions) has no IoU and is left out of the mean,
as mmseg's nanmean does. The per-image counts are the run's stored outcomes
(`peft_bench.results.outcomes`): a resample of the images sums the counts of the images drawn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from peft_bench.data.targets import IGNORE_INDEX
from peft_bench.layers.maps import resize
from peft_bench.metrics.base import SampleEvaluator

COUNTS = ("intersection", "label_area", "predicted_area")  # the outcomes, each (images, classes)


def image_counts(
    prediction: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """(3, num_classes) int64 for one label map: per class, the pixels where prediction and label
    agree, that are labelled it and that are predicted it (`ignore_index` pixels left out)."""
    valid = target != ignore_index
    predicted, labelled = prediction[valid], target[valid]
    counts = [labelled[predicted == labelled], labelled, predicted]
    return torch.stack([torch.bincount(c.long(), minlength=num_classes) for c in counts]).cpu().numpy()


def segmentation_scores(intersection: np.ndarray, label_area: np.ndarray, predicted_area: np.ndarray) -> dict:
    """mIoU, mAcc (mean per-class pixel accuracy) and aAcc (all pixels) from the per-class totals."""
    intersection, label_area = intersection.astype(np.float64), label_area.astype(np.float64)
    union = label_area + predicted_area - intersection
    with np.errstate(invalid="ignore"):  # 0 / 0: nan, a class without a union (IoU) or label (Acc)
        iou, accuracy = intersection / union, intersection / label_area
        overall = intersection.sum() / label_area.sum()
    return {"miou": 100.0 * _nanmean(iou), "macc": 100.0 * _nanmean(accuracy), "aacc": 100.0 * float(overall)}


def _nanmean(values: np.ndarray) -> float:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if len(defined) else math.nan


def miou_scores(outcomes: Mapping[str, np.ndarray], images: np.ndarray | None = None) -> dict[str, float]:
    """The scores over `images` (indices into the split, repeats allowed: a resample; None: every
    image) from the per-image counts."""
    totals = [(outcomes[name] if images is None else outcomes[name][images]).sum(0) for name in COUNTS]
    return segmentation_scores(*totals)


class SegmentationEvaluator(SampleEvaluator):
    """mIoU, mAcc and aAcc over a split, each prediction's logits resized (bilinear) to its label
    map's original size before the argmax, as mmseg does."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        super().__init__()

    def update(self, predictions: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> None:
        for logits, target in zip(predictions, targets, strict=True):
            if logits.shape[-2:] != target.shape[-2:]:
                logits = resize(logits[None].float(), target.shape[-2:])[0]
            self.samples.append(image_counts(logits.argmax(0), target.to(logits.device), self.num_classes))

    def outcomes_of(self, samples: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Per image: the three counts per class."""
        table = np.stack(samples) if samples else np.zeros((0, len(COUNTS), self.num_classes), dtype=np.int64)
        return {name: table[:, row] for row, name in enumerate(COUNTS)}

    def score(self, outcomes: Mapping[str, np.ndarray]) -> dict[str, float]:
        return miou_scores(outcomes)
