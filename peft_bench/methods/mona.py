"""Mona: multi-cognitive visual adapters after the attention and MLP residual adds."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformerBlock
from torch import nn

from peft_bench.backbones.swin import slots_of
from peft_bench.config import MethodConfig
from peft_bench.methods.base import BlockInsertion, register_method
from peft_bench.methods.layers import Bottleneck, trunc_normal_linears

KERNEL_SIZES = (3, 5, 7)


@dataclass
class MonaConfig(MethodConfig):
    dim: int = 64  # bottleneck width n
    dropout: float = 0.1
    # The input scales S1, S2 (gamma, gammax). Default: per-channel vectors, as the reference code,
    # whose counts match the paper's Tables 4 and 5. True: two scalars, as the paper's text and
    # its formula (2m - 2 fewer parameters per module).
    scalar_scales: bool = False
    # Run the three depthwise convs as one 7x7 conv with their merged kernel (same parameters,
    # gradients and optimiser state as three convs; faster).
    merged_conv: bool = True


class MultiCognitiveFilter(nn.Module):
    """Mona's filters on the (B, H, W, n) bottleneck tokens, seen as a (B, n, H, W) map.

    `u = u + mean(dw3(u), dw5(u), dw7(u))`, then `u = u + conv1x1(u)`.
    """

    def __init__(self, channels: int, merged: bool) -> None:
        super().__init__()
        self.depthwise = nn.ModuleList(
            nn.Conv2d(channels, channels, k, padding=k // 2, groups=channels) for k in KERNEL_SIZES
        )
        self.pointwise = nn.Conv2d(channels, channels, 1)
        self.merged = merged

    def merged_depthwise(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The 7x7 kernel and bias of one depthwise conv equal to the mean of the three.

        Each kernel is zero-padded to 7x7, then kernels and biases are averaged. Computed from the
        three kernels on every call, so gradients flow to them. The identity skip stays a
        separate add: folded into the kernel's centre it would lose precision under bf16.
        """
        size = max(KERNEL_SIZES)
        padded = [F.pad(conv.weight, [(size - conv.kernel_size[0]) // 2] * 4) for conv in self.depthwise]
        weight = torch.stack(padded).mean(dim=0)
        bias = torch.stack([conv.bias for conv in self.depthwise]).mean(dim=0)
        return weight, bias

    def _mean_depthwise(self, u: torch.Tensor) -> torch.Tensor:
        if self.merged:
            weight, bias = self.merged_depthwise()
            return F.conv2d(u, weight, bias, padding=weight.shape[-1] // 2, groups=u.shape[1])
        return torch.stack([conv(u) for conv in self.depthwise]).mean(dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.permute(0, 3, 1, 2)
        u = u + self._mean_depthwise(u)
        u = u + self.pointwise(u)
        return u.permute(0, 2, 3, 1)

    def extra_repr(self) -> str:
        return f"merged={self.merged}"


class MonaModule(nn.Module):
    """`x + up(drop(gelu(filters(down(LN(x) * gamma + x * gammax)))))` on (B, H, W, m) tokens.

    Init as the reference code: gamma 1e-6, gammax 1, Linear layers trunc-normal(std 0.02) with
    zero bias, convs PyTorch's default; not zero-initialised.
    """

    def __init__(self, dim: int, hidden: int, dropout: float, scalar_scales: bool, merged_conv: bool) -> None:
        super().__init__()
        scale_shape = () if scalar_scales else (dim,)
        self.norm = nn.LayerNorm(dim)
        self.gamma = nn.Parameter(torch.full(scale_shape, 1e-6))
        self.gammax = nn.Parameter(torch.ones(scale_shape))
        self.bottleneck = Bottleneck.linear(
            dim, hidden, dropout, mid=MultiCognitiveFilter(hidden, merged_conv)
        )
        trunc_normal_linears(self.bottleneck)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bottleneck(self.norm(x) * self.gamma + x * self.gammax)


@register_method("mona", label="Mona")
class Mona(BlockInsertion):
    """Two Mona modules per block, on the main stream after each residual add.

    Slots `post_attn` and `post_mlp`. Per block: 2((2n + 5)m + n^2 + 88n) with vector scales.
    """

    config_class = MonaConfig
    cfg: MonaConfig

    def insert(self, block: SwinTransformerBlock) -> None:
        slots = slots_of(block)
        slots.post_attn = self._module(block.dim)
        slots.post_mlp = self._module(block.dim)

    def _module(self, dim: int) -> MonaModule:
        cfg = self.cfg
        return MonaModule(dim, cfg.dim, cfg.dropout, cfg.scalar_scales, cfg.merged_conv)
