"""COCO box and mask mAP of instance segmentation, by torchmetrics over pycocotools."""

from __future__ import annotations

import importlib.util

import torch
from torchmetrics.detection import MeanAveragePrecision

from peft_bench.engine.distributed import computed_on_main

MASK_THRESHOLD = 0.5  # mask probabilities above it belong to the instance (mmdet's mask_thr_binary)


class InstanceEvaluator:
    """COCO mAP@[.5:.95] of boxes and masks (`ap_box`, `ap_mask`, percent) by torchmetrics over
    pycocotools (faster-coco-eval when installed), over the images of every DDP rank.

    torchmetrics' own sync gathers its per-image states one collective per image, which breaks when
    ranks hold different numbers of images (the eval shards do): the evaluator gathers the states to
    rank 0 itself, evaluates there once and sends the metrics to every rank. The states live on the
    CPU, where COCO evaluation runs.
    """

    BACKEND = "faster_coco_eval" if importlib.util.find_spec("faster_coco_eval") else "pycocotools"

    def __init__(self) -> None:
        self.metric = self.new_metric()

    def new_metric(self) -> MeanAveragePrecision:
        return MeanAveragePrecision(iou_type=("bbox", "segm"), backend=self.BACKEND, sync_on_compute=False)

    def reset(self) -> None:
        self.metric.reset()

    def update(
        self, predictions: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]]
    ) -> None:
        detections = [
            {
                "boxes": p["boxes"].float().cpu(),
                "scores": p["scores"].float().cpu(),
                "labels": p["labels"].cpu(),
                "masks": (p["masks"][:, 0] > MASK_THRESHOLD).cpu(),
            }
            for p in predictions
        ]
        truths = [
            {
                "boxes": t["boxes"].float().cpu(),
                "labels": t["labels"].cpu(),
                "masks": t["masks"].bool().cpu(),
                **({"iscrowd": t["iscrowd"].cpu()} if "iscrowd" in t else {}),
            }
            for t in targets
        ]
        self.metric.update(detections, truths)

    def compute(self) -> dict[str, float]:
        """Over every process's images: COCO evaluation runs once, on rank 0."""
        return computed_on_main([self.metric.metric_state], self._ap)

    def _ap(self, shards: list[dict[str, list]]) -> dict[str, float]:
        merged = self.new_metric()
        for name in self.metric.metric_state:
            setattr(merged, name, [item for shard in shards for item in shard[name]])
        result = merged.compute()
        return {"ap_box": 100.0 * result["bbox_map"].item(), "ap_mask": 100.0 * result["segm_map"].item()}
