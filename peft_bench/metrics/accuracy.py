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

from peft_bench.engine.distributed import computed_on_main, gather_in_sample_order

TOP_K = {"top1": 1, "top5": 5}


def accuracy_scores(outcomes: Mapping[str, np.ndarray], images: np.ndarray | None = None) -> dict[str, float]:
    """Top-1 and top-5 in percent from per-image outcomes, over `images` (indices into the split,
    repeats allowed: a resample; None: every image)."""
    chosen = {name: hits if images is None else hits[images] for name, hits in outcomes.items()}
    return {name: 100.0 * float(np.mean(hits)) if len(hits) else 0.0 for name, hits in chosen.items()}


class ClassificationEvaluator:
    """Top-1 and top-5 accuracy (micro: the fraction of images) over the images of all ranks."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        self.hits: list[tuple[bool, bool]] = []  # per image: (top1, top5)

    def update(self, predictions: torch.Tensor, targets: torch.Tensor) -> None:
        scores, labels = predictions.float()[..., None], targets.to(predictions.device)[:, None]
        classes = self.num_classes
        hits = [
            multiclass_accuracy(scores, labels, classes, top_k=min(k, classes), multidim_average="samplewise")
            for k in TOP_K.values()
        ]
        self.hits.extend(zip(*(hit.bool().tolist() for hit in hits), strict=True))

    def compute(self) -> dict[str, float]:
        return computed_on_main(self.hits, lambda hits: accuracy_scores(_as_outcomes(hits)))

    def outcomes(self) -> dict[str, np.ndarray] | None:
        """Per image of the split, in its order: top1 and top5 (bool); on rank 0 (None elsewhere)."""
        hits = gather_in_sample_order(self.hits)
        return None if hits is None else _as_outcomes(hits)


def _as_outcomes(hits: list[tuple[bool, bool]]) -> dict[str, np.ndarray]:
    table = np.array(hits, dtype=bool).reshape(-1, len(TOP_K))
    return {name: table[:, column] for column, name in enumerate(TOP_K)}
