"""Paired comparisons on shared bootstrap draws, and Holm's correction over a family of them.

Two cells of one test set are scored on the same resamples (`peft_bench.stats.bootstrap`), so the
difference of their distributions is the paired bootstrap distribution of their difference. Its
two-sided p-value is the smallest level at which the percentile interval of that distribution
excludes zero, `2 min(P*(d <= 0), P*(d >= 0))` with the usual +1 correction ((k + 1) / (B + 1)), so
that a finite number of resamples never claims p = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from statsmodels.stats.multitest import multipletests

from peft_bench.stats.bootstrap import Resampling

CORRECTIONS = ("holm", "none")


@dataclass(frozen=True)
class Comparison:
    difference: float  # point estimate: mean of A minus mean of the baseline
    low: float
    high: float
    p: float


def compare(difference: float, distribution: np.ndarray, resampling: Resampling) -> Comparison:
    """The paired test of a `difference` whose bootstrap `distribution` (one value per resample) is
    the difference of two distributions on the same draws."""
    count = len(distribution) + 1
    below = (np.count_nonzero(distribution <= 0) + 1) / count
    above = (np.count_nonzero(distribution >= 0) + 1) / count
    return Comparison(difference, *resampling.interval(distribution), min(1.0, 2 * min(below, above)))


def adjust(p_values: np.ndarray, correction: str) -> np.ndarray:
    """The p-values of one family of comparisons, adjusted by `correction` (holm: Holm's step-down,
    which controls the family-wise error rate under any dependence; none: as they are)."""
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}: use one of {CORRECTIONS}")
    if correction == "none" or not len(p_values):
        return np.asarray(p_values, dtype=float)
    return multipletests(p_values, method="holm")[1]
