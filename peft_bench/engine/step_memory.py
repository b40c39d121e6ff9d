"""What a training step must hold in memory, accounted rather than measured: the same on any device.

A step holds every weight, a gradient and AdamW's two moments per trainable parameter, and the
activations autograd saves for the backward. On a GPU the allocator's peak measures about that; on
the CPU a process's peak resident set is mostly the process itself (libraries, data, the allocator's
caches), about the same for every method, so it cannot tell Fixed's step from Full's. This account
can: it counts the tensors, not the process. It leaves out what the backward allocates transiently
(gradients of activations, freed as it goes) and buffers (BatchNorm statistics, a few KB).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

ADAMW_STATE = 2  # AdamW's moments per trainable element (its step count is one scalar per tensor)


@contextmanager
def saved_activations(model: nn.Module) -> Iterator[dict[int, int]]:
    """Inside, the distinct storages autograd saves for backward (address -> bytes), the model's
    parameters left out: they are counted once as weights. Read it after the forward."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield saved


def step_memory(model: nn.Module, saved: dict[int, int]) -> int:
    """Bytes a step of `model` holds at its peak: weights, trainable gradients and AdamW moments,
    and the activations saved in its forward (`saved_activations`)."""
    parameters = list(model.parameters())
    weights = sum(p.numel() * p.element_size() for p in parameters)
    trainable = sum(p.numel() * p.element_size() for p in parameters if p.requires_grad)
    return weights + (1 + ADAMW_STATE) * trainable + sum(saved.values())
