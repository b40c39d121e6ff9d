"""AdamW over the trainable tensors, with a warm-up + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from peft_bench.tasks.base import TaskModel

# Tensors that take no weight decay, as Swin's reference configs: norms, biases, the relative
# position tables, and any other 1-d scale vector (Mona's gammas, LayerNorm weights).
NO_DECAY_SUFFIXES = ("relative_position_bias_table",)


def parameter_groups(
    model: nn.Module, lr: float, weight_decay: float, head_lr_mult: float = 1.0
) -> list[dict]:
    """The trainable parameters grouped by weight decay (none on norms, biases and position tables)
    and by lr: the backbone's tensors, a method's included, take `lr`; the rest of a `TaskModel`
    (the neck and head, which start from scratch) take `lr * head_lr_mult`, as mmdet's and mmseg's
    `paramwise_cfg` multipliers do."""
    backbone = {id(p) for p in model.backbone.parameters()} if isinstance(model, TaskModel) else None
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = 0.0 if p.ndim <= 1 or name.endswith(NO_DECAY_SUFFIXES) else weight_decay
        group_lr = lr if backbone is None or id(p) in backbone else lr * head_lr_mult
        groups.setdefault((decay, group_lr), []).append(p)
    return [{"params": ps, "weight_decay": decay, "lr": group_lr} for (decay, group_lr), ps in groups.items()]


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float, head_lr_mult: float = 1.0
) -> torch.optim.AdamW:
    return torch.optim.AdamW(parameter_groups(model, lr, weight_decay, head_lr_mult), lr=lr)


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
