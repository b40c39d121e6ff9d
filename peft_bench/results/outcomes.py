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

import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from peft_bench.errors import UserError
from peft_bench.results.atomic import write_atomic

OUTCOMES_FILE = "outcomes.npz"

Outcomes = dict[str, np.ndarray]


def write_outcomes(run_dir: Path, outcomes: Outcomes) -> Path:
    path = run_dir / OUTCOMES_FILE
    write_atomic(path, lambda file: np.savez_compressed(file, **outcomes))
    return path


def read_outcomes(run_dir: Path) -> Outcomes | None:
    """The run's stored outcomes, or None if it has none; UserError for a file that cannot be read."""
    path = run_dir / OUTCOMES_FILE
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {name: stored[name] for name in stored.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise UserError(
            f"{path} cannot be read ({type(error).__name__}: {error}): it is not the compressed npz "
            "a run writes. Delete it (the run's metrics stay; its cell then has no interval) or re-run "
            "the run to store it again."
        ) from error


def ranked(outcomes: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    """Detection outcomes (per detection `image`, `class_index`, `score`, ... in image order) ordered
    as they are stored: by class, then descending score, ties in image order (a stable sort). Those
    already in that order (all but files stored before it was the order) come back as they are."""
    class_steps, score_steps = np.diff(outcomes["class_index"]), np.diff(outcomes["score"])
    if np.all(class_steps >= 0) and np.all(score_steps[class_steps == 0] <= 0):
        return outcomes
    order = np.lexsort((-outcomes["score"], outcomes["class_index"]))
    rows = len(outcomes["score"])
    return {
        name: values[order] if len(values) == rows and name != "positives" else values
        for name, values in outcomes.items()
    }


def ranked_by_class(
    outcomes: Mapping[str, np.ndarray], images: np.ndarray | None
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Detection outcomes in stored order (pass older files through `ranked` first; `positives` per
    image and class) over `images` (indices, repeats allowed: a resample; None: all): per class with
    positives among them, (class index, positives, the rows of its detections of those images in
    ranked order, and each one's weight: how many times its image was drawn). A detection drawn k
    times counts k times, its copies side by side: with ties of score in image order, this is how VOC
    and COCO rank the drawn images evaluated together, and it needs no sort per resample."""
    positives, classes = outcomes["positives"], outcomes["class_index"]
    counts = (
        np.ones(len(positives), np.int64) if images is None else np.bincount(images, minlength=len(positives))
    )
    weights = counts[outcomes["image"]]
    bounds = np.searchsorted(classes, np.arange(positives.shape[1] + 1))
    for column, total in enumerate(counts @ positives):
        if total:
            rows = np.arange(bounds[column], bounds[column + 1])
            drawn = weights[rows] > 0
            yield column, int(total), rows[drawn], weights[rows[drawn]]
