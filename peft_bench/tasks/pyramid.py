"""The Swin as a torchvision-style multi-scale backbone, the input of an FPN or a decoder."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from peft_bench.backbones.swin import SwinBackbone


class PyramidBackbone(nn.Module):
    """Normed stage outputs of `stages` (0-3, strides 4-32) as an OrderedDict of (B, C, H, W) maps,
    keyed "0", "1", ... in order, as torchvision's detection necks expect."""

    def __init__(self, swin: SwinBackbone, stages: Sequence[int] = (0, 1, 2, 3)) -> None:
        super().__init__()
        if swin.output_norms is None:
            raise ValueError("call swin.use_output_norms() before the method is applied")
        self.swin = swin
        self.stages = tuple(stages)
        self.in_channels = [swin.stage_dims[s] for s in self.stages]

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        maps = self.swin.forward_pyramid(images)
        return OrderedDict((str(i), maps[s]) for i, s in enumerate(self.stages))
