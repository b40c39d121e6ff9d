"""AdamW over the trainable tensors, with a warm-up + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

# Tensors that take no weight decay, as Swin's reference configs: norms, biases, the relative
# position tables, and any other 1-d scale vector (Mona's gammas, LayerNorm weights).
NO_DECAY_SUFFIXES = ("relative_position_bias_table",)


def parameter_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """Two groups of the trainable parameters: with and without weight decay."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(NO_DECAY_SUFFIXES):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lr": lr},
        {"params": no_decay, "weight_decay": 0.0, "lr": lr},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(parameter_groups(model, lr, weight_decay), lr=lr)


def warmup_cosine(total_steps: int, warmup_steps: int, min_lr_ratio: float):
    """The lr factor at a step: linear warm-up from ~0, then cosine decay to `min_lr_ratio`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return min_lr_ratio + (1.0 - min_lr_ratio) * cosine

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, min_lr_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total_steps, warmup_steps, min_lr_ratio)
    )
