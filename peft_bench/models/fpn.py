"""A backbone's pyramid as a torchvision-style multi-scale backbone, and the backbone + FPN of the
detectors."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, FeaturePyramidNetwork, LastLevelP6P7

from peft_bench.backbones.base import Backbone


class PyramidBackbone(nn.Module):
    """The pyramid levels `stages` (0-3, strides 4-32) of a backbone as an OrderedDict of (B, C, H, W)
    maps, keyed "0", "1", ... in order, as torchvision's detection necks expect: the backbone's
    normed maps through the `Pyramid` it makes for them (`pyramid`, trained with the neck)."""

    def __init__(self, backbone: Backbone, stages: Sequence[int] = (0, 1, 2, 3)) -> None:
        super().__init__()
        if backbone.output_norms is None:
            raise ValueError("call backbone.prepare_output_norms(per_stage=True) before building a pyramid")
        self.backbone = backbone
        self.pyramid = backbone.pyramid(stages)
        self.in_channels = list(self.pyramid.channels)

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        levels = self.pyramid(self.backbone.forward_pyramid(images))
        return OrderedDict((str(i), level) for i, level in enumerate(levels))


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


class BackboneFPN(nn.Module):
    """The `backbone` of a torchvision detector: the pyramid levels of `body` through an FPN of
    `channels`, with the extra levels of `extra_blocks` (RetinaNet: P6/P7; R-CNN: a max-pooled P6)."""

    def __init__(self, body: PyramidBackbone, channels: int, extra_blocks: ExtraFPNBlock) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(self.body.in_channels, channels, extra_blocks=extra_blocks)
        self.out_channels = channels

    def neck(self) -> nn.ModuleList:
        """What the paper counts as the neck: the pyramid's own layers (if any) and the FPN."""
        return nn.ModuleList([self.body.pyramid, self.fpn])

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(self.body(images))
