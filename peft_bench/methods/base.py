"""The contract of a tuning method, and the registry that maps `method=<name>` to it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import torch
from timm.models.swin_transformer import SwinTransformerBlock
from torch import nn

from peft_bench.backbones.swin import SwinBackbone
from peft_bench.config import MethodConfig
from peft_bench.errors import UserError


class Method(ABC):
    """Freezes, selects or inserts tensors in a backbone; knows nothing of the task.

    After `apply`, exactly the parameters that the method tunes have `requires_grad=True`.
    """

    config_class: ClassVar[type[MethodConfig]] = MethodConfig

    def __init__(self, cfg: MethodConfig) -> None:
        self.cfg = cfg

    @abstractmethod
    def apply(self, backbone: SwinBackbone) -> None:
        """Modify `backbone` in place for this method."""


METHODS: dict[str, type[Method]] = {}


def register(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: make a method available as `method=<name>`."""

    def add(cls: type[Method]) -> type[Method]:
        METHODS[name] = cls
        return cls

    return add


def build_method(cfg: MethodConfig) -> Method:
    try:
        cls = METHODS[cfg.name]
    except KeyError:
        raise UserError(
            f"Unknown tuning method {cfg.name!r}. Known methods: {', '.join(sorted(METHODS))}. "
            "Choose one with method=<name>."
        ) from None
    return cls(cfg)


def freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


class BlockInsertion(Method):
    """A method that freezes the backbone, then adds trainable modules to every block."""

    def apply(self, backbone: SwinBackbone) -> None:
        freeze(backbone)
        for _, block in backbone.blocks():
            # New modules are created where the block lives, so `apply` also works after `.to()`.
            with torch.device(next(block.parameters()).device):
                self.insert(block)

    @abstractmethod
    def insert(self, block: SwinTransformerBlock) -> None:
        """Add this method's modules to one frozen block, sized by its width `block.dim`."""
