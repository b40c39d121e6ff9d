"""Merged inference: a method whose update folds into the frozen tensors evaluates as the plain model.

LoRA's and DoRA's q and v updates fold into `attn.qkv.weight`, SSF's scales and shifts into the
layer they follow; the merged model then costs what the pretrained one costs. `merged(model)` folds
every such module for the time of an evaluation and restores the tensors bit for bit afterwards
(it keeps a copy of what it overwrites), so training goes on from exactly where it was.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class Mergeable(ABC):
    """Mixin for a module whose trainable update can be folded into frozen tensors it owns."""

    merged: bool = False  # True: forward is the plain module's, with the update already in its tensors

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the frozen tensors, in place, once; forward becomes the plain module's.

        For inference: further training of the update would no longer reach the output."""
        if not self.merged:
            self.fold()
            self.merged = True

    @abstractmethod
    def fold(self) -> None:
        """Write the update into the tensors of `merge_targets` (called without autograd)."""

    @abstractmethod
    def merge_targets(self) -> list[torch.Tensor]:
        """The tensors `fold` overwrites."""


@contextmanager
def merged(model: nn.Module) -> Iterator[nn.Module]:
    """`model` with every unmerged `Mergeable` merged; on exit, as before, bit for bit."""
    modules = [m for m in model.modules() if isinstance(m, Mergeable) and not m.merged]
    with torch.no_grad():
        saved = [[t.clone() for t in m.merge_targets()] for m in modules]
        for module in modules:
            module.merge()
    try:
        yield model
    finally:
        with torch.no_grad():
            for module, copies in zip(modules, saved, strict=True):
                for target, copy in zip(module.merge_targets(), copies, strict=True):
                    target.copy_(copy)
                module.merged = False
