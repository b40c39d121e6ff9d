"""Classification accuracy: top-1 and top-5 over a split, from each image's outcome, across DDP ranks.

An image's outcome is whether its class is among the top 1 and among the top 5 predictions, by
torchmetrics' own rule (ties included); the accuracies are the fractions of images. The outcomes are
what a run stores (`peft_bench.results.outcomes`) and what a bootstrap resamples.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torchmetrics.functional.classification import multiclass_accuracy

from peft_bench.metrics.base import SampleEvaluator

TOP_K = {"top1": 1, "top5": 5}


def accuracy_scores(outcomes: Mapping[str, np.ndarray], images: np.ndarray | None = None) -> dict[str, float]:
    """Top-1 and top-5 in percent from per-image outcomes, over `images` (indices into the split,
    repeats allowed: a resample; None: every image)."""
    chosen = {name: hits if images is None else hits[images] for name, hits in outcomes.items()}
    return {name: 100.0 * float(np.mean(hits)) if len(hits) else 0.0 for name, hits in chosen.items()}


class ClassificationEvaluator(SampleEvaluator):
    """Top-1 and top-5 accuracy (micro: the fraction of images) over the images of all ranks."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        super().__init__()

    def update(self, predictions: torch.Tensor, targets: torch.Tensor) -> None:
        scores, labels = predictions.float()[..., None], targets.to(predictions.device)[:, None]
        classes = self.num_classes
        hits = [
            multiclass_accuracy(scores, labels, classes, top_k=min(k, classes), multidim_average="samplewise")
            for k in TOP_K.values()
        ]
        self.samples.extend(zip(*(hit.bool().tolist() for hit in hits), strict=True))  # per image

    def outcomes_of(self, samples: list[tuple[bool, bool]]) -> dict[str, np.ndarray]:
        """Per image: top1 and top5 (bool)."""
        table = np.array(samples, dtype=bool).reshape(-1, len(TOP_K))
        return {name: table[:, column] for column, name in enumerate(TOP_K)}

    def score(self, outcomes: Mapping[str, np.ndarray]) -> dict[str, float]:
        return accuracy_scores(outcomes)
