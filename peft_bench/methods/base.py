"""The contract of a tuning method; `method=<name>` chooses one from `METHODS` (`peft_bench.registry`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import nn

from peft_bench.backbones.base import Backbone, Block
from peft_bench.config import MethodConfig
from peft_bench.registry import METHODS, register_method  # noqa: F401  (register_method: re-exported)


class Method(ABC):
    """Freezes, selects or inserts tensors in a backbone; knows nothing of the task.

    After `apply`, exactly the parameters that the method tunes have `requires_grad=True`.
    """

    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    label: ClassVar[str]  # the method's name in tables (`register_method`)

    def __init__(self, cfg: MethodConfig) -> None:
        self.cfg = cfg

    @abstractmethod
    def apply(self, backbone: Backbone) -> None:
        """Modify `backbone` in place for this method."""


def build_method(cfg: MethodConfig) -> Method:
    return METHODS.lookup(cfg.name)(cfg)


def freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


class BlockInsertion(Method):
    """A method that freezes the backbone, then adds trainable modules to every block."""

    def apply(self, backbone: Backbone) -> None:
        freeze(backbone)
        for block in backbone.transformer_blocks():
            # New modules are created where the block lives, so `apply` also works after `.to()`.
            with torch.device(next(block.module.parameters()).device):
                self.insert(block)

    @abstractmethod
    def insert(self, block: Block) -> None:
        """Add this method's modules to one frozen block (its `slots`, its `part`s), sized by its
        width `block.dim`."""
