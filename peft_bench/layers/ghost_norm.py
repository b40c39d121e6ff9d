"""BatchNorm over groups of a batch's images, and the SyncBatchNorm conversion that leaves it alone.

mmseg's plain `BN` under DDP normalises each GPU's images by their own statistics: the reference's
ADE20K runs of six methods did so over 2 images per GPU (8 GPUs, 16 images). `GhostBatchNorm2d`
reproduces that on any number of devices: in training, each group of `group` consecutive images is
normalised by its own statistics, and the running statistics follow the first group only, as the
checkpoint of such a run holds rank 0's (mmseg's DDP does not broadcast buffers). In evaluation it
is a plain BatchNorm. Parameters, buffers and state-dict keys are BatchNorm's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class GhostBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of each group of `group` images."""

    def __init__(self, num_features: int, group: int) -> None:
        super().__init__(num_features)
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or len(x) <= self.group:
            return super().forward(x)
        first, *others = x.split(self.group)
        rest = [F.batch_norm(g, None, None, self.weight, self.bias, True, 0.0, self.eps) for g in others]
        return torch.cat([super().forward(first), *rest])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, group={self.group}"


def synchronise_batch_norms(module: nn.Module) -> nn.Module:
    """`module` with every BatchNorm converted to SyncBatchNorm (statistics over all processes' images,
    as mmseg's and mmdet's SyncBN), except the ghost ones, whose groups are the point."""
    if isinstance(module, GhostBatchNorm2d):
        return module
    if isinstance(module, _BatchNorm):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        module.add_module(name, synchronise_batch_norms(child))
    return module
