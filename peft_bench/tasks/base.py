"""What the trainer needs from a task: data, a model that returns its loss, and an evaluator.

The trainer knows no task and no method; a task knows no method (it receives a backbone on
which the method has already been applied).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from peft_bench.backbones.swin import SwinBackbone
from peft_bench.config import Config
from peft_bench.data.base import TaskData


class TaskModel(nn.Module):
    """Backbone plus neck and head. `forward` returns the training loss (so DDP sees it).

    `backbone` is the Swin and `neck` the module between it and the head (None if there is none):
    they group the parameters as the paper counts them.
    """

    backbone: SwinBackbone
    neck: nn.Module | None = None

    @abstractmethod
    def forward(self, images: Any, targets: Any) -> torch.Tensor: ...

    @abstractmethod
    def predict(self, images: Any) -> Any: ...


class Evaluator(Protocol):
    """Accumulates predictions over a split (across DDP ranks) and reports metrics in percent."""

    def reset(self) -> None: ...

    def update(self, predictions: Any, targets: Any) -> None: ...

    def compute(self) -> dict[str, float]: ...


class Task(ABC):
    name: ClassVar[str]
    main_metric: ClassVar[str]  # the validation metric that selects the model (higher is better)
    dense: ClassVar[bool] = False  # True: the backbone feeds a neck through per-stage output norms

    @abstractmethod
    def build_data(self, cfg: Config) -> TaskData: ...

    @abstractmethod
    def build_model(self, backbone: SwinBackbone, data: TaskData, cfg: Config) -> TaskModel: ...

    @abstractmethod
    def build_evaluator(self, data: TaskData, device: torch.device) -> Evaluator: ...
