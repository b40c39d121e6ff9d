"""The Swin as a torchvision-style multi-scale backbone, and the Swin + FPN of the detectors."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, FeaturePyramidNetwork, LastLevelP6P7

from peft_bench.backbones.swin import SwinBackbone


class PyramidBackbone(nn.Module):
    """Normed stage outputs of `stages` (0-3, strides 4-32) as an OrderedDict of (B, C, H, W) maps,
    keyed "0", "1", ... in order, as torchvision's detection necks expect."""

    def __init__(self, swin: SwinBackbone, stages: Sequence[int] = (0, 1, 2, 3)) -> None:
        super().__init__()
        if swin.output_norms is None:
            raise ValueError("call swin.prepare_output_norms(per_stage=True) before building a pyramid")
        self.swin = swin
        self.stages = tuple(stages)
        self.in_channels = [swin.stage_dims[s] for s in self.stages]

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        maps = self.swin.forward_pyramid(images)
        return OrderedDict((str(i), maps[s]) for i, s in enumerate(self.stages))


class ExtraLevelsOnInput(LastLevelP6P7):
    """P6 from C5 and P7 from P6, as mmdet's `add_extra_convs='on_input'`: C5 even where its width
    equals the FPN's (torchvision then takes P5), and a ReLU before P7 only if `relu` (mmdet's
    `relu_before_extra_convs`, false by default; torchvision's always has it)."""

    def __init__(self, in_channels: int, out_channels: int, relu: bool) -> None:
        super().__init__(in_channels, out_channels)
        self.use_P5 = False
        self.relu = relu

    def forward(
        self, p: list[torch.Tensor], c: list[torch.Tensor], names: list[str]
    ) -> tuple[list[torch.Tensor], list[str]]:
        p6 = self.p6(c[-1])
        p7 = self.p7(F.relu(p6) if self.relu else p6)
        return [*p, p6, p7], [*names, "p6", "p7"]


class SwinFPN(nn.Module):
    """The `backbone` of a torchvision detector: the normed maps of Swin `stages` through an FPN of
    `channels`, with the extra levels of `extra_blocks` (RetinaNet: P6/P7; R-CNN: a max-pooled P6)."""

    def __init__(
        self, swin: SwinBackbone, channels: int, stages: Sequence[int], extra_blocks: ExtraFPNBlock
    ) -> None:
        super().__init__()
        self.body = PyramidBackbone(swin, stages)
        self.fpn = FeaturePyramidNetwork(self.body.in_channels, channels, extra_blocks=extra_blocks)
        self.out_channels = channels

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(self.body(images))
