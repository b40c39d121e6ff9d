"""Bootstrap distributions of a cell's metrics over its seeds and its test images.

A resample draws the test images with replacement and, independently, the cell's runs (seeds) with
replacement; its value is the mean over the drawn runs of each run's metric on the drawn images
(the task's `score` on the run's stored outcomes). So an interval covers both what another seed and
what another test set of the same size would have given. The draws are made once per test set
(`Resampling`): every cell of one test set is scored on the same image draws, and cells with as many
runs on the same run draws (runs in seed order, so seed k meets seed k), which makes the difference
of two cells' distributions their paired bootstrap distribution; different test sets draw
independently, so the mean of their distributions is the stratified bootstrap of a mean over them.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from peft_bench.results.outcomes import Outcomes

Scorer = Callable[[Outcomes, np.ndarray | None], dict[str, float]]


@dataclass(frozen=True)
class Resampling:
    """How many resamples, the intervals' confidence level and the seed of the draws."""

    resamples: int = 1000
    level: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.resamples < 1 or not 0 < self.level < 1:
            raise ValueError(
                f"resamples must be >= 1 and level in (0, 1), not {self.resamples}, {self.level}"
            )

    def _rng(self, test_set: str, *sizes: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(test_set.encode()), *sizes])

    def images(self, test_set: str, count: int) -> np.ndarray:
        """(resamples, count) indices of the test images drawn, the same for every cell of `test_set`."""
        return self._rng(test_set, count).integers(0, count, (self.resamples, count))

    def runs(self, test_set: str, images: int, count: int) -> np.ndarray:
        """(resamples, count) positions of the runs drawn, the same for every cell with `count` runs."""
        return self._rng(test_set, images, count, 1).integers(0, count, (self.resamples, count))

    def interval(self, values: np.ndarray) -> tuple[float, float]:
        """The percentile interval of a bootstrap distribution at the confidence level."""
        tail = (1 - self.level) / 2
        low, high = np.quantile(values, [tail, 1 - tail])
        return float(low), float(high)


@dataclass(frozen=True)
class CellBootstrap:
    """One cell's runs scored on every resample of its test set."""

    metrics: tuple[str, ...]
    observed: np.ndarray  # (runs, metrics): each run's metrics on the whole test set
    resampled: np.ndarray  # (resamples, runs, metrics): each run on each resample's images
    run_draws: np.ndarray  # (resamples, runs): the positions of the runs each resample draws

    def point(self, metric: str) -> float:
        """The mean over the runs of `metric` on the whole test set: the cell's reported mean."""
        return float(self.observed[:, self.metrics.index(metric)].mean())

    def per_run(self, metric: str) -> np.ndarray:
        """(resamples, runs) the drawn runs' `metric` on the drawn images, in the order drawn."""
        return np.take_along_axis(self.resampled[..., self.metrics.index(metric)], self.run_draws, axis=1)

    def distribution(self, metric: str) -> np.ndarray:
        """(resamples,) the mean over the drawn runs of `metric` on the drawn images."""
        return self.per_run(metric).mean(axis=1)


def bootstrap_cell(
    outcomes: Sequence[Outcomes], samples: int, score: Scorer, test_set: str, resampling: Resampling
) -> CellBootstrap:
    """The bootstrap of a cell from its runs' stored `outcomes` (in seed order), each of `samples`
    test images of `test_set`, scored by the task's `score`."""
    images = resampling.images(test_set, samples)
    observed = [score(run, None) for run in outcomes]
    metrics = tuple(observed[0])
    resampled = [[_values(score(run, drawn), metrics) for run in outcomes] for drawn in images]
    return CellBootstrap(
        metrics,
        np.array([_values(run, metrics) for run in observed]),
        np.array(resampled).reshape(resampling.resamples, len(outcomes), len(metrics)),
        resampling.runs(test_set, samples, len(outcomes)),
    )


def _values(scores: dict[str, float], metrics: tuple[str, ...]) -> list[float]:
    return [scores[metric] for metric in metrics]
