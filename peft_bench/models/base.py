"""The contract of a task model: what the trainer, the parameter accounting and the delta need."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
from torch import nn

from peft_bench.backbones.swin import SwinBackbone


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
