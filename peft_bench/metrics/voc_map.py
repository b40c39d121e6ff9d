"""Pascal VOC mean average precision at one IoU threshold, as the VOC devkit and mmdet compute it.

For each class: the detections of every image are ranked by descending score; each one is matched to
the ground-truth box of its image with which it has the highest IoU (difficult boxes included). At an
IoU of at least the threshold it is a true positive if that box is not yet taken (each box is taken
at most once: a duplicate is a false positive), *ignored* (neither true nor false) if the box is
difficult, and a false positive otherwise. Difficult boxes do not count among the positives. AP is
the VOC2007 11-point interpolation (`11points`, mmdet's mode for VOC2007 test) or the area under the
interpolated precision-recall curve (`area`, VOC2010 onwards). The mean skips classes without any
non-difficult ground truth in the split, as mmdet's `eval_map` does.

Boxes are (x1, y1, x2, y2) in continuous pixel coordinates (`peft_bench.data.voc` converts VOC's
1-based inclusive pixel indices to them), so plain IoU here equals the devkit's IoU with its +1 widths.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import box_iou

from peft_bench.engine.distributed import computed_on_main

MODES = ("11points", "area")


@dataclass(frozen=True)
class Detections:
    """The detections of one image: boxes (N, 4), scores (N,), labels (N,)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class GroundTruth:
    """The annotated objects of one image: boxes (M, 4), labels (M,), difficult (M,) bool."""

    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray


def average_precision(recall: np.ndarray, precision: np.ndarray, mode: str = "11points") -> float:
    """AP of one ranked list, from its cumulative recall and precision (0 when the list is empty)."""
    if mode == "11points":
        points = [precision[recall >= t].max(initial=0.0) for t in np.linspace(0, 1, 11)]
        return float(np.mean(points))
    if mode == "area":
        recall = np.concatenate([[0.0], recall, [1.0]])
        envelope = np.maximum.accumulate(np.concatenate([[0.0], precision, [0.0]])[::-1])[::-1]
        steps = np.flatnonzero(recall[1:] != recall[:-1])
        return float(np.sum((recall[steps + 1] - recall[steps]) * envelope[steps + 1]))
    raise ValueError(f"unknown AP mode {mode!r}: use one of {MODES}")


def match_image(
    boxes: np.ndarray, gt_boxes: np.ndarray, gt_difficult: np.ndarray, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """(true positive, false positive) flags of one image's detections of one class, which must come
    in descending score order; a detection ignored for a difficult box has both flags 0."""
    tp, fp = np.zeros(len(boxes)), np.zeros(len(boxes))
    if not len(gt_boxes):
        fp[:] = 1
        return tp, fp
    iou = box_iou(torch.as_tensor(boxes, dtype=torch.float64), torch.as_tensor(gt_boxes, dtype=torch.float64))
    best_iou, best = (t.numpy() for t in iou.max(dim=1))
    taken = np.zeros(len(gt_boxes), dtype=bool)
    for i, (overlap, j) in enumerate(zip(best_iou, best, strict=True)):
        if overlap < iou_threshold:
            fp[i] = 1
        elif not gt_difficult[j]:
            tp[i], fp[i] = (0, 1) if taken[j] else (1, 0)
            taken[j] = True
    return tp, fp


def class_average_precision(
    detections: Sequence[Detections],
    ground_truths: Sequence[GroundTruth],
    label: int,
    iou_threshold: float = 0.5,
    mode: str = "11points",
) -> float | None:
    """AP of class `label` over images given in the same order; None if it has no positive."""
    scores, tps, fps, positives = [], [], [], 0
    for det, gt in zip(detections, ground_truths, strict=True):
        mine, gt_mine = det.labels == label, gt.labels == label
        positives += int(np.sum(~gt.difficult[gt_mine]))
        order = np.argsort(-det.scores[mine], kind="stable")
        tp, fp = match_image(det.boxes[mine][order], gt.boxes[gt_mine], gt.difficult[gt_mine], iou_threshold)
        scores.append(det.scores[mine][order])
        tps.append(tp)
        fps.append(fp)
    if positives == 0:
        return None
    ranking = np.argsort(-np.concatenate(scores), kind="stable")
    tp = np.cumsum(np.concatenate(tps)[ranking])
    fp = np.cumsum(np.concatenate(fps)[ranking])
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return average_precision(tp / positives, precision, mode)


def voc_map(
    detections: Sequence[Detections],
    ground_truths: Sequence[GroundTruth],
    labels: Iterable[int],
    iou_threshold: float = 0.5,
    mode: str = "11points",
) -> tuple[float, dict[int, float]]:
    """(mean AP, AP per label) over `labels`, as fractions; labels without positives are left out."""
    if mode not in MODES:
        raise ValueError(f"unknown AP mode {mode!r}: use one of {MODES}")
    per_class = {}
    for label in labels:
        ap = class_average_precision(detections, ground_truths, label, iou_threshold, mode)
        if ap is not None:
            per_class[label] = ap
    return (float(np.mean(list(per_class.values()))) if per_class else 0.0), per_class


class VOCEvaluator:
    """`ap50`: VOC mAP at IoU 0.5 in percent (11-point by default), over the images of all ranks.
    Targets without `difficult` flags (the embedded scenes) have no difficult object."""

    def __init__(self, num_classes: int, mode: str = "11points") -> None:
        self.labels = range(1, num_classes + 1)
        self.mode = mode
        self.reset()

    def reset(self) -> None:
        self.detections: list[Detections] = []
        self.ground_truths: list[GroundTruth] = []

    def update(
        self, predictions: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]]
    ) -> None:
        for prediction, target in zip(predictions, targets, strict=True):
            boxes, scores, labels = (_np(prediction[k]) for k in ("boxes", "scores", "labels"))
            self.detections.append(Detections(boxes, scores, labels))
            difficult = target.get("difficult", torch.zeros_like(target["labels"], dtype=torch.bool))
            self.ground_truths.append(
                GroundTruth(_np(target["boxes"]), _np(target["labels"]), _np(difficult))
            )

    def compute(self) -> dict[str, float]:
        """Over every process's images: computed once, on rank 0."""
        return computed_on_main(list(zip(self.detections, self.ground_truths, strict=True)), self._ap50)

    def _ap50(self, images: list[tuple[Detections, GroundTruth]]) -> dict[str, float]:
        detections, truths = zip(*images, strict=True) if images else ((), ())
        mean, _ = voc_map(list(detections), list(truths), self.labels, 0.5, self.mode)
        return {"ap50": 100.0 * mean}


def _np(tensor: torch.Tensor) -> np.ndarray:
    """On the CPU, floats as float32 (AMP may hand over half-precision boxes and scores)."""
    tensor = tensor.detach().cpu()
    return (tensor.float() if tensor.is_floating_point() else tensor).numpy()
