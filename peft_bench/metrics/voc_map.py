"""Pascal VOC mean average precision at one IoU threshold, as the VOC devkit and mmdet compute it.

For each class: the detections of every image are ranked by descending score; each one is matched to
the ground-truth box of its image with which it has the highest IoU (difficult boxes included). At an
IoU of at least the threshold it is a true positive if that box is not yet taken (each box is taken
at most once: a duplicate is a false positive), *ignored* (neither true nor false) if the box is
difficult, and a false positive otherwise. Difficult boxes do not count among the positives. AP is
the VOC2007 11-point interpolation (`11points`, mmdet's mode for VOC2007 test) or the area under the
interpolated precision-recall curve (`area`, VOC2010 onwards). The mean skips classes without any
non-difficult ground truth in the split, as mmdet's `eval_map` does.

Boxes are (x1, y1, x2, y2) and IoU is plain (no +1 in widths), as mmdet 2.x's `eval_map` computes it on
the boxes of its `XMLDataset` (VOC's 1-based pixel indices less 1: `peft_bench.data.voc`); the devkit's
IoU, with its +1 widths, scores the same boxes a little higher.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import box_iou

from peft_bench.metrics.base import SampleEvaluator
from peft_bench.results.outcomes import ranked, ranked_by_class

MODES = ("11points", "area")
DETECTION_FIELDS = ("image", "class_index", "score", "tp", "fp")  # per matched detection: `match_images`


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


def match_images(
    images: Sequence[tuple[Detections, GroundTruth]], labels: Sequence[int], iou_threshold: float = 0.5
) -> dict[str, np.ndarray]:
    """Every detection of `labels` matched within its image, as per-image outcomes: `image` (its index
    in `images`), `class_index` (into `labels`), `score`, `tp` and `fp` per detection, grouped by image
    in order and, within one, by class and descending score (stable); `positives`: the non-difficult
    boxes per image and class. Matching never looks across images, so any resample of the images
    is scored from these alone (`mean_average_precision`)."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in DETECTION_FIELDS}
    positives = np.zeros((len(images), len(labels)), dtype=np.int64)
    for index, (det, gt) in enumerate(images):
        for column, label in enumerate(labels):
            mine, gt_mine = det.labels == label, gt.labels == label
            positives[index, column] = np.sum(~gt.difficult[gt_mine])
            order = np.argsort(-det.scores[mine], kind="stable")
            boxes, scores = det.boxes[mine][order], det.scores[mine][order]
            tp, fp = match_image(boxes, gt.boxes[gt_mine], gt.difficult[gt_mine], iou_threshold)
            where = (np.full(len(order), index, np.int32), np.full(len(order), column, np.int16))
            found = (*where, scores, tp.astype(bool), fp.astype(bool))
            for name, values in zip(DETECTION_FIELDS, found, strict=True):
                parts[name].append(values)
    outcomes = {
        name: np.concatenate(values) if values else np.zeros(0, np.int64) for name, values in parts.items()
    }
    return ranked({**outcomes, "positives": positives})


def mean_average_precision(
    outcomes: Mapping[str, np.ndarray], images: np.ndarray | None = None, mode: str = "11points"
) -> tuple[float, dict[int, float]]:
    """(mean AP, AP per class index) over `images` (indices, repeats allowed: a resample; None: all)
    from `match_images`' outcomes, as fractions; a class without positives among them is left out."""
    if mode not in MODES:
        raise ValueError(f"unknown AP mode {mode!r}: use one of {MODES}")
    per_class = {}
    outcomes = ranked(outcomes)  # as stored since they are kept ranked; older files are sorted here
    for column, total, rows, weights in ranked_by_class(outcomes, images):
        tp, fp = np.cumsum(weights * outcomes["tp"][rows]), np.cumsum(weights * outcomes["fp"][rows])
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        per_class[column] = average_precision(tp / total, precision, mode)
    return (float(np.mean(list(per_class.values()))) if per_class else 0.0), per_class


def voc_scores(outcomes: Mapping[str, np.ndarray], images: np.ndarray | None = None) -> dict[str, float]:
    """`ap50` in percent (11 points, `VOCEvaluator`'s) over `images` from a run's stored outcomes."""
    return {"ap50": 100.0 * mean_average_precision(outcomes, images)[0]}


def voc_map(
    detections: Sequence[Detections],
    ground_truths: Sequence[GroundTruth],
    labels: Iterable[int],
    iou_threshold: float = 0.5,
    mode: str = "11points",
) -> tuple[float, dict[int, float]]:
    """(mean AP, AP per label) over `labels`, as fractions; labels without positives are left out."""
    labels = list(labels)
    outcomes = match_images(list(zip(detections, ground_truths, strict=True)), labels, iou_threshold)
    mean, per_class = mean_average_precision(outcomes, None, mode)
    return mean, {labels[column]: ap for column, ap in per_class.items()}


class VOCEvaluator(SampleEvaluator):
    """`ap50`: VOC mAP at IoU 0.5 in percent (11-point by default), over the images of all ranks.
    Targets without `difficult` flags (the embedded scenes) have no difficult object."""

    def __init__(self, num_classes: int, mode: str = "11points") -> None:
        self.labels = list(range(1, num_classes + 1))
        self.mode = mode
        super().__init__()

    def update(
        self, predictions: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]]
    ) -> None:
        for prediction, target in zip(predictions, targets, strict=True):
            boxes, scores, labels = (_np(prediction[k]) for k in ("boxes", "scores", "labels"))
            difficult = target.get("difficult", torch.zeros_like(target["labels"], dtype=torch.bool))
            truth = GroundTruth(_np(target["boxes"]), _np(target["labels"]), _np(difficult))
            self.samples.append((Detections(boxes, scores, labels), truth))

    def outcomes_of(self, samples: list[tuple[Detections, GroundTruth]]) -> dict[str, np.ndarray]:
        return match_images(samples, self.labels, 0.5)

    def score(self, outcomes: Mapping[str, np.ndarray]) -> dict[str, float]:
        return {"ap50": 100.0 * mean_average_precision(outcomes, None, self.mode)[0]}


def _np(tensor: torch.Tensor) -> np.ndarray:
    """On the CPU, floats as float32 (AMP may hand over half-precision boxes and scores)."""
    tensor = tensor.detach().cpu()
    return (tensor.float() if tensor.is_floating_point() else tensor).numpy()
