"""Per-sample outcomes of a run's reported test evaluation, stored beside its record.

`outcomes.npz` in the run folder holds, per test image in the split's order, what the task's
`score` function needs to recompute the reported metrics on any resampling of the test images
(classification: top1 / top5 hits; VOC and COCO detection: each detection matched within its
image, and the positives per image and class; semantic segmentation: per class, the pixels of
agreement, label and prediction), so that intervals and paired tests need no re-evaluation. It is
written atomically before `metrics.json`, which marks the run completed; records from before it
existed have none, and their intervals are unavailable.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from peft_bench.results.atomic import write_atomic

OUTCOMES_FILE = "outcomes.npz"

Outcomes = dict[str, np.ndarray]


def write_outcomes(run_dir: Path, outcomes: Outcomes) -> Path:
    path = run_dir / OUTCOMES_FILE
    write_atomic(path, lambda file: np.savez_compressed(file, **outcomes))
    return path


def read_outcomes(run_dir: Path) -> Outcomes | None:
    """The run's stored outcomes, or None if it has none."""
    path = run_dir / OUTCOMES_FILE
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as stored:
        return {name: stored[name] for name in stored.files}


def ranked_by_class(
    outcomes: Mapping[str, np.ndarray], images: np.ndarray | None
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Detection outcomes (per detection `image`, `class_index`, `score`, grouped by image in order;
    `positives` per image and class) over `images` (indices, repeats allowed: a resample; None: all):
    per class with positives among them, (class index, positives, the indices of its detections of
    those images ranked by descending score, ties in the order drawn), as VOC and COCO rank them."""
    positives = outcomes["positives"]
    drawn = np.arange(len(positives)) if images is None else np.asarray(images)
    picked = _rows_of_drawn(outcomes["image"], drawn, len(positives))
    classes = outcomes["class_index"][picked]
    for column, total in enumerate(positives[drawn].sum(0)):
        if total:
            mine = picked[classes == column]
            yield column, int(total), mine[np.argsort(-outcomes["score"][mine], kind="stable")]


def _rows_of_drawn(sample: np.ndarray, drawn: np.ndarray, num_samples: int) -> np.ndarray:
    """Indices of the rows of the `drawn` samples (repeats allowed), sample by sample in the order
    drawn; `sample` is each row's sample, rows grouped by sample in order."""
    counts = np.bincount(sample, minlength=num_samples)
    starts, lengths = np.cumsum(counts) - counts, counts[drawn]
    return np.repeat(starts[drawn] - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())
