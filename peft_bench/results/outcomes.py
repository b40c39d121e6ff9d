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


def rows_of_drawn(sample: np.ndarray, drawn: np.ndarray, num_samples: int) -> np.ndarray:
    """Indices of the rows (e.g. detections) of the `drawn` samples (repeats allowed), sample by
    sample in the order drawn; `sample` is each row's sample, rows grouped by sample in order."""
    counts = np.bincount(sample, minlength=num_samples)
    starts, lengths = np.cumsum(counts) - counts, counts[drawn]
    return np.repeat(starts[drawn] - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())
