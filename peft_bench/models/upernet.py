"""UperNet (Xiao et al., 2018) as mmsegmentation's `UPerHead`, and its auxiliary `FCNHead`.

Layer for layer as mmseg's `upernet_swin` config: a pyramid pooling module (scales 1, 2, 3, 6) on
the last map, 1x1 laterals with top-down fusion, 3x3 FPN convs, every level upsampled to the
first (stride 4) and fused by a 3x3 conv. A ConvModule is conv (no bias) + BatchNorm + ReLU with
mmcv's init; mmseg uses SyncBN on GPUs, which the trainer converts BatchNorm to under DDP on
CUDA, or plain BN per GPU (`norm_group`: BatchNorm over groups of that many images, as
`GhostBatchNorm2d`). Resizes are bilinear with align_corners=False, as mmseg's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from peft_bench.layers.ghost_norm import GhostBatchNorm2d
from peft_bench.layers.maps import resize

PPM_SCALES = (1, 2, 3, 6)


class ConvModule(nn.Sequential):
    """mmcv's ConvModule with a norm: conv without bias (kaiming fan_out), BatchNorm (over groups of
    `norm_group` images, if given), ReLU."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, norm_group: int | None = None
    ) -> None:
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        norm = (
            nn.BatchNorm2d(out_channels) if norm_group is None else GhostBatchNorm2d(out_channels, norm_group)
        )
        super().__init__(conv, norm, nn.ReLU(inplace=True))


def classifier(channels: int, num_classes: int, dropout: float = 0.1) -> nn.Sequential:
    """mmseg's `cls_seg`: channel dropout, then a 1x1 conv initialised with std 0.01."""
    conv = nn.Conv2d(channels, num_classes, 1)
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)
    return nn.Sequential(nn.Dropout2d(dropout), conv)


class PyramidPooling(nn.Module):
    """PSPNet's pooling branches: each pools to s x s, projects, and is upsampled back."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        scales: Sequence[int] = PPM_SCALES,
        norm_group: int | None = None,
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(in_channels, channels, 1, norm_group))
            for s in scales
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [resize(branch(x), x.shape[-2:]) for branch in self.branches]


class UperNetDecoder(nn.Module):
    """UPerHead without its classifier: stage maps (strides 4-32) -> (B, channels, H/4, W/4)."""

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int,
        pool_scales: Sequence[int] = PPM_SCALES,
        norm_group: int | None = None,
    ):
        super().__init__()
        self.ppm = PyramidPooling(in_channels[-1], channels, pool_scales, norm_group)
        self.bottleneck = ConvModule(in_channels[-1] + len(pool_scales) * channels, channels, 3, norm_group)
        self.lateral_convs = nn.ModuleList(ConvModule(c, channels, 1, norm_group) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(
            ConvModule(channels, channels, 3, norm_group) for _ in in_channels[:-1]
        )
        self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3, norm_group)

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        top = maps[-1]
        laterals = [conv(m) for conv, m in zip(self.lateral_convs, maps[:-1], strict=True)]
        laterals.append(self.bottleneck(torch.cat([top, *self.ppm(top)], dim=1)))
        for i in range(len(laterals) - 1, 0, -1):  # top-down: each level adds the fused one above
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals[:-1], strict=True)] + [laterals[-1]]
        size = outs[0].shape[-2:]
        return self.fpn_bottleneck(torch.cat([outs[0], *(resize(x, size) for x in outs[1:])], dim=1))


class FCNHead(nn.Sequential):
    """mmseg's auxiliary FCNHead (num_convs=1, concat_input=False): a 3x3 ConvModule, then cls_seg."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        dropout: float = 0.1,
        norm_group: int | None = None,
    ) -> None:
        super().__init__(
            ConvModule(in_channels, channels, 3, norm_group), *classifier(channels, num_classes, dropout)
        )
