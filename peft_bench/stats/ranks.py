"""Methods ranked across datasets: average ranks, the Friedman test, and the Nemenyi post-hoc test
with its critical difference, as Demšar (JMLR 2006) recommends for comparing several methods over
several datasets. The tests are scipy's and scikit-posthocs'; the diagram is scikit-posthocs'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scikit_posthocs
from matplotlib.axes import Axes
from scipy.stats import friedmanchisquare, studentized_range


@dataclass(frozen=True)
class Ranking:
    """Methods over blocks (datasets): rank 1 is the best score of a block, ties share their mean."""

    scores: pd.DataFrame  # blocks x methods, higher is better, complete
    alpha: float = 0.05

    @property
    def ranks(self) -> pd.DataFrame:
        return self.scores.rank(axis=1, ascending=False)

    @property
    def average_ranks(self) -> pd.Series:
        return self.ranks.mean(axis=0).sort_values()

    @property
    def friedman_p(self) -> float:
        """The Friedman test's p-value (NaN with fewer than 3 methods or 2 blocks)."""
        if self.scores.shape[1] < 3 or self.scores.shape[0] < 2:
            return math.nan
        return float(friedmanchisquare(*self.scores.to_numpy().T).pvalue)

    @property
    def critical_difference(self) -> float:
        """Nemenyi's critical difference of average ranks at `alpha`: q_alpha sqrt(k (k + 1) / (6 N)),
        q_alpha the studentized range quantile over sqrt 2 (Demšar's Table 5)."""
        methods, blocks = self.scores.shape[1], self.scores.shape[0]
        q = studentized_range.ppf(1 - self.alpha, methods, np.inf) / math.sqrt(2)
        return float(q * math.sqrt(methods * (methods + 1) / (6 * blocks)))

    @property
    def nemenyi(self) -> pd.DataFrame:
        """Methods x methods: the Nemenyi test's p-values of each pair."""
        return scikit_posthocs.posthoc_nemenyi_friedman(self.scores)

    def draw(self, axes: Axes) -> None:
        """The critical-difference diagram: average ranks on the axis, the methods that the Nemenyi
        test cannot tell apart joined by a bar, the critical difference drawn above."""
        scikit_posthocs.critical_difference_diagram(
            self.average_ranks,
            self.nemenyi,
            cd=self.critical_difference,
            alpha=self.alpha,
            ax=axes,
            label_fmt_left="{label} ({rank:.2f})",
            label_fmt_right="({rank:.2f}) {label}",
        )


def complete(scores: pd.DataFrame) -> tuple[pd.DataFrame, list[str], list[str]]:
    """A complete block design from `scores` (blocks x methods, NaN where missing): the blocks that
    at least half the methods have, then the methods with a score in every one of them (a method
    not run everywhere is left out rather than a dataset). Returns it, and what was left out."""
    measured = scores.notna().sum(axis=1)
    kept = scores.loc[measured >= measured.max() / 2].dropna(axis=1)
    dropped_methods = [m for m in scores.columns if m not in kept.columns]
    dropped_blocks = [b for b in scores.index if b not in kept.index]
    return kept, dropped_methods, dropped_blocks
