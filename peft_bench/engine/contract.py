"""What the trainer drives: a task model and its evaluator. Tasks build them; the trainer knows neither
the task nor the method behind them."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, Protocol

import torch
from torch import nn

from peft_bench.backbones.base import Backbone


class TaskModel(nn.Module):
    """Backbone plus neck and head. `forward` returns the training loss (so DDP sees it).

    `backbone` is the tuned backbone and `neck` the module between it and the head (None if there
    is none): they group the parameters as the paper counts them (a parameter of the backbone
    counts as the backbone's wherever else it is registered).
    """

    backbone: Backbone
    neck: nn.Module | None = None

    @abstractmethod
    def forward(self, images: Any, targets: Any) -> torch.Tensor: ...

    @abstractmethod
    def predict(self, images: Any) -> Any: ...


class Evaluator(Protocol):
    """Accumulates predictions over a split (across DDP ranks) and reports metrics in percent.

    An evaluator may also keep per-sample outcomes: an `outcomes()` method returning, on rank 0 (None
    elsewhere), arrays over the split's samples in its order, which the run stores and its task's
    `score` turns back into the metrics (`peft_bench.results.outcomes`).
    """

    def reset(self) -> None: ...

    def update(self, predictions: Any, targets: Any) -> None: ...

    def compute(self) -> dict[str, float]: ...
