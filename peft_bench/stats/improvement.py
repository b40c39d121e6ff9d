"""The probability of improvement over a baseline across tasks, as rliable defines it (Agarwal et al.,
NeurIPS 2021): the mean over tasks of P(X_m > Y_m), the fraction of pairs (a run of X, a run of Y)
on task m in which X scores higher, ties counting one half."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def probability_of_improvement(method: Sequence[np.ndarray], baseline: Sequence[np.ndarray]) -> np.ndarray:
    """Per task, the runs' scores `(..., runs)` of the method and of the baseline (the leading axes,
    e.g. resamples, shared); the probability, with the leading shape."""
    per_task = []
    for x, y in zip(method, baseline, strict=True):
        ahead, level = x[..., :, None] > y[..., None, :], x[..., :, None] == y[..., None, :]
        per_task.append((ahead + 0.5 * level).mean(axis=(-2, -1)))
    return np.mean(per_task, axis=0)
