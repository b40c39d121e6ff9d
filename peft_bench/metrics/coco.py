"""COCO box and mask mAP@[.5:.95] of instance segmentation: pycocotools matches, per image, as COCO does.

pycocotools' `COCOeval.evaluate` matches each image's detections to its ground truth (crowds
ignored, the 100 best detections per image and category) and `accumulate` ranks them over the split.
Only the first looks at boxes and masks, and only within one image: its per-image results are the
run's stored outcomes (`peft_bench.results.outcomes`), from which `coco_ap` ranks any resample of the
images as `accumulate` and `summarize` rank the whole split (all areas, at most 100 detections, the
101 recall thresholds and ten IoU thresholds: the AP the paper reports).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from peft_bench.metrics.base import SampleEvaluator
from peft_bench.results.outcomes import ranked, ranked_by_class

MASK_THRESHOLD = 0.5  # mask probabilities above it belong to the instance (mmdet's mask_thr_binary)
MAX_DETECTIONS = 100  # per image and category, as COCO's AP
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
IOU_TYPES = {"box": "bbox", "mask": "segm"}  # our prefix -> pycocotools' iouType


@dataclass(frozen=True)
class Instances:
    """One image's instances: boxes (N, 4) xyxy, labels (N,), masks as COCO RLEs, and scores (N,)
    for detections or crowd flags (N,) for ground truth."""

    boxes: np.ndarray
    labels: np.ndarray
    masks: list[dict]
    scores: np.ndarray | None = None
    crowd: np.ndarray | None = None


def encode_masks(masks: torch.Tensor) -> list[dict]:
    """COCO's compressed RLE of each of (N, H, W) binary masks."""
    if not len(masks):
        return []
    return mask_utils.encode(np.asfortranarray(masks.to(torch.uint8).permute(1, 2, 0).numpy()))


def _coco(images: Sequence[tuple[Instances, Instances]], iou_type: str) -> tuple[COCO, COCO]:
    """The ground truth and the detections as pycocotools datasets; image i has id i."""
    datasets = {"truth": [], "detections": []}
    for image_id, (detections, truth) in enumerate(images):
        for side, instances in (("detections", detections), ("truth", truth)):
            for i, (x0, y0, x1, y1) in enumerate(instances.boxes.tolist()):
                area = mask_utils.area(instances.masks[i]) if iou_type == "segm" else (x1 - x0) * (y1 - y0)
                annotation = {
                    "id": len(datasets[side]) + 1,
                    "image_id": image_id,
                    "category_id": int(instances.labels[i]),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "segmentation": instances.masks[i],
                    "area": float(area),
                    "iscrowd": 0 if instances.crowd is None else int(instances.crowd[i]),
                }
                if instances.scores is not None:
                    annotation["score"] = float(instances.scores[i])
                datasets[side].append(annotation)
    labels = sorted({a["category_id"] for entries in datasets.values() for a in entries})
    sizes = [next((m["size"] for side in image for m in side.masks), (0, 0)) for image in images]
    coco = {}
    for side, entries in datasets.items():
        coco[side] = COCO()
        coco[side].dataset = {
            "images": [{"id": i, "height": h, "width": w} for i, (h, w) in enumerate(sizes)],
            "categories": [{"id": label} for label in labels],
            "annotations": entries,
        }
        with contextlib.redirect_stdout(io.StringIO()):
            coco[side].createIndex()
    return coco["truth"], coco["detections"]


def match_instances(images: Sequence[tuple[Instances, Instances]], iou_type: str) -> dict[str, np.ndarray]:
    """pycocotools' per-image matches of (detections, ground truth) `images`, over all areas: per
    detection `image`, `class_index`, `score`, `matched` and `ignored` (T IoU thresholds each),
    `ranked` (by class, then descending score, ties in image order); `positives`: the
    non-crowd objects per image and class."""
    truth, detections = _coco(images, iou_type)
    evaluation = COCOeval(truth, detections, iou_type)
    evaluation.params.areaRng, evaluation.params.areaRngLbl = [[0, 1e10]], ["all"]
    evaluation.params.maxDets = [MAX_DETECTIONS]
    categories = evaluation.params.catIds
    thresholds = len(evaluation.params.iouThrs)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation.evaluate()
    per_image: dict[tuple[int, int], dict] = {}
    for found in evaluation.evalImgs:  # category-major, then image
        if found is not None:
            per_image[found["image_id"], categories.index(found["category_id"])] = found
    parts: dict[str, list] = {name: [] for name in ("image", "class_index", "score", "matched", "ignored")}
    positives = np.zeros((len(images), len(categories)), dtype=np.int64)
    for (image, column), found in sorted(per_image.items()):
        count = len(found["dtScores"])
        positives[image, column] = np.count_nonzero(np.asarray(found["gtIgnore"]) == 0)
        parts["image"].append(np.full(count, image, np.int32))
        parts["class_index"].append(np.full(count, column, np.int16))
        parts["score"].append(np.asarray(found["dtScores"], np.float32))  # float32 scores, exactly
        parts["matched"].append(np.asarray(found["dtMatches"]).T.reshape(count, thresholds) > 0)
        parts["ignored"].append(np.asarray(found["dtIgnore"]).T.reshape(count, thresholds).astype(bool))
    empty = {"matched": np.zeros((0, thresholds), bool), "ignored": np.zeros((0, thresholds), bool)}
    outcomes = {
        name: np.concatenate(values) if values else empty.get(name, np.zeros(0, np.int64))
        for name, values in parts.items()
    }
    return ranked({**outcomes, "positives": positives})


def coco_ap(outcomes: Mapping[str, np.ndarray], images: np.ndarray | None = None) -> float:
    """COCO mAP@[.5:.95] (a fraction) over `images` (indices, repeats allowed: a resample; None:
    all) from `match_instances`' outcomes, ranked as pycocotools' `accumulate`; 0 with no category
    that has a positive."""
    precisions = []
    outcomes = ranked(outcomes)  # as stored since they are kept ranked; older files are sorted here
    for _, total, rows, weights in ranked_by_class(outcomes, images):
        if not len(rows):  # positives, no detection: zero precision at every threshold
            precisions += [np.zeros(len(RECALL_THRESHOLDS))] * outcomes["matched"].shape[1]
            continue
        matched, ignored = outcomes["matched"][rows].T, outcomes["ignored"][rows].T
        tp_sum = np.cumsum(weights * (matched & ~ignored), axis=1).astype(float)
        fp_sum = np.cumsum(weights * (~matched & ~ignored), axis=1).astype(float)
        for tp, fp in zip(tp_sum, fp_sum, strict=True):
            precision = np.maximum.accumulate((tp / (fp + tp + np.spacing(1)))[::-1])[::-1]
            at = np.searchsorted(tp / total, RECALL_THRESHOLDS, side="left")
            precisions.append(np.where(at < len(tp), precision[np.minimum(at, len(tp) - 1)], 0.0))
    return float(np.mean(precisions)) if precisions else 0.0


def instance_outcomes(images: Sequence[tuple[Instances, Instances]]) -> dict[str, np.ndarray]:
    """`match_instances` of boxes and of masks, each outcome prefixed `box.` or `mask.`."""
    return {
        f"{prefix}.{name}": values
        for prefix, iou_type in IOU_TYPES.items()
        for name, values in match_instances(images, iou_type).items()
    }


def instance_scores(outcomes: Mapping[str, np.ndarray], images: np.ndarray | None = None) -> dict[str, float]:
    """`ap_box` and `ap_mask` in percent over `images` from a run's stored outcomes."""
    scores = {}
    for prefix in IOU_TYPES:
        mine = {
            name.partition(".")[2]: values for name, values in outcomes.items() if name.startswith(prefix)
        }
        scores[f"ap_{prefix}"] = 100.0 * coco_ap(mine, images)
    return scores


class InstanceEvaluator(SampleEvaluator):
    """COCO mAP@[.5:.95] of boxes and masks (`ap_box`, `ap_mask`, percent) over the images of every
    DDP rank, evaluated once on rank 0 and sent to every rank. Masks are kept as RLEs on the CPU."""

    def update(
        self, predictions: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]]
    ) -> None:
        for p, t in zip(predictions, targets, strict=True):
            detections = Instances(
                p["boxes"].float().cpu().numpy(),
                p["labels"].cpu().numpy(),
                encode_masks(p["masks"][:, 0].cpu() > MASK_THRESHOLD),
                scores=p["scores"].float().cpu().numpy(),
            )
            crowd = t["iscrowd"].cpu().numpy() if "iscrowd" in t else np.zeros(len(t["labels"]), np.int64)
            truth = Instances(
                t["boxes"].float().cpu().numpy(),
                t["labels"].cpu().numpy(),
                encode_masks(t["masks"].bool().cpu()),
                crowd=crowd,
            )
            self.samples.append((detections, truth))

    def outcomes_of(self, samples: list[tuple[Instances, Instances]]) -> dict[str, np.ndarray]:
        return instance_outcomes(samples)

    def score(self, outcomes: Mapping[str, np.ndarray]) -> dict[str, float]:
        return instance_scores(outcomes)
