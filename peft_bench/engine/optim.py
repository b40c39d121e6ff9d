"""AdamW over the trainable tensors, grouped by learning rate and weight decay.

Which tensors take no weight decay follows rules (`trainer.no_decay`) that express mmcv's
`paramwise_cfg` of each reference config in terms of what a tensor is, not of the reference's
module names: `layer_norms` (the custom key 'norm', which in the reference models names exactly
the LayerNorms, and `norm_decay_mult=0`), `biases` (`bias_decay_mult=0`), `position_tables`
(the custom keys 'relative_position_bias_table' and 'absolute_pos_embed'), and the harness's own
`vectors` (every tensor of at most one dimension). Under every rule, a module's tensors that it
names in `decay_exempt` (e.g. SSF's scales and shifts, which its source never decays) take none.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from peft_bench.config import NoDecay
from peft_bench.engine.contract import TaskModel

POSITION_TABLES = ("relative_position_bias_table", "absolute_pos_embed")
HARNESS_NO_DECAY = (NoDecay.vectors, NoDecay.position_tables)


def exempt_from_decay(module: nn.Module, leaf: str, param: nn.Parameter, rules: set[NoDecay]) -> bool:
    """Whether `param`, registered as `leaf` in `module`, takes no weight decay under `rules`."""
    return (
        leaf in getattr(module, "decay_exempt", ())
        or (NoDecay.vectors in rules and param.ndim <= 1)
        or (NoDecay.layer_norms in rules and isinstance(module, nn.LayerNorm))
        or (NoDecay.biases in rules and leaf == "bias")
        or (NoDecay.position_tables in rules and leaf in POSITION_TABLES)
    )


def _trainable(model: nn.Module) -> Iterator[tuple[nn.Module, str, nn.Parameter]]:
    """(owning module, name in it, parameter) of each trainable tensor, once, in `named_parameters` order."""
    seen: set[int] = set()
    for module in model.modules():
        for leaf, p in module.named_parameters(recurse=False):
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                yield module, leaf, p


def parameter_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    head_lr_mult: float = 1.0,
    no_decay: Sequence[NoDecay] = HARNESS_NO_DECAY,
) -> list[dict]:
    """The trainable parameters grouped by weight decay (none for those `no_decay` exempts) and by
    lr: the backbone's tensors, a method's included, take `lr`; the rest of a `TaskModel` (the
    neck and head, which start from scratch) take `lr * head_lr_mult`, as mmdet's and mmseg's
    `paramwise_cfg` multipliers do."""
    backbone = {id(p) for p in model.backbone.parameters()} if isinstance(model, TaskModel) else None
    rules = {NoDecay(rule) for rule in no_decay}
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for module, leaf, p in _trainable(model):
        decay = 0.0 if exempt_from_decay(module, leaf, p, rules) else weight_decay
        group_lr = lr if backbone is None or id(p) in backbone else lr * head_lr_mult
        groups.setdefault((decay, group_lr), []).append(p)
    return [{"params": ps, "weight_decay": decay, "lr": group_lr} for (decay, group_lr), ps in groups.items()]


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    head_lr_mult: float = 1.0,
    no_decay: Sequence[NoDecay] = HARNESS_NO_DECAY,
    fused: bool = False,
) -> torch.optim.AdamW:
    """AdamW over `parameter_groups`; `fused` runs its update as one kernel (the trainer's on CUDA)."""
    groups = parameter_groups(model, lr, weight_decay, head_lr_mult, no_decay)
    return torch.optim.AdamW(groups, lr=lr, fused=fused or None)
