"""The contract of a tuning method, and the registry that maps `method=<name>` to it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import torch
from hydra.core.config_store import ConfigStore
from torch import nn

from peft_bench.backbones.base import Backbone, Block
from peft_bench.config import MethodConfig
from peft_bench.registry import Registry


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


METHODS: Registry[type[Method]] = Registry("tuning method", "method")


def register_method(
    name: str, *, config: type[MethodConfig] | None = None, label: str | None = None
) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: make a method available as `method=<name>`, everywhere.

    `config` is its schema (default: the class's `config_class`), stored with Hydra as
    `schema/method/<name>` (a YAML file in a `method/` config group can name it in its defaults) and
    as the group entry `method/<name>` itself, so the method runs with no YAML file at all. `label`
    is its name in the reporter's tables (default: `name`).
    """

    def add(cls: type[Method]) -> type[Method]:
        cls.config_class = config or cls.config_class
        cls.label = label or name
        METHODS.add(name, cls)
        store = ConfigStore.instance()
        store.store(group="schema/method", name=name, node=cls.config_class)
        store.store(group="method", name=name, node=cls.config_class(name=name))
        return cls

    return add


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
