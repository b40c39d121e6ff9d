"""The evaluators' common shape: metrics scored from per-sample outcomes, once, on rank 0.

`update` appends each sample's record to `samples`; the first `compute()` or `outcomes()` after it
gathers every rank's records in the dataset's order (`gather_in_sample_order`, a collective), turns
them into the task's outcomes once (`outcomes_of`) and keeps them, so that the run stores exactly
the outcomes its reported metrics were scored from, without matching them twice.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from peft_bench.engine.distributed import broadcast_object, gather_in_sample_order
from peft_bench.results.outcomes import Outcomes


class SampleEvaluator(ABC):
    """An `Evaluator` whose metrics are `score(outcomes)` of its samples' outcomes."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.samples: list[Any] = []
        self._outcomes: Outcomes | None = None
        self._outcomes_of = -1  # how many of this rank's samples `_outcomes` covers

    @abstractmethod
    def outcomes_of(self, samples: list[Any]) -> Outcomes:
        """The outcomes of every sample's record, in the dataset's order."""

    @abstractmethod
    def score(self, outcomes: Outcomes) -> dict[str, float]:
        """The metrics, in percent, from the outcomes of the whole split."""

    def outcomes(self) -> Outcomes | None:
        """The outcomes of the samples so far, on rank 0 (None elsewhere); every rank calls it."""
        if self._outcomes_of != len(self.samples):
            gathered = gather_in_sample_order(self.samples)
            self._outcomes = None if gathered is None else self.outcomes_of(gathered)
            self._outcomes_of = len(self.samples)
        return self._outcomes

    def compute(self) -> dict[str, float]:
        """Scored once, on rank 0, and sent to every rank."""
        outcomes = self.outcomes()
        return broadcast_object(None if outcomes is None else self.score(outcomes))
