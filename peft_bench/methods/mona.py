"""Mona: multi-cognitive visual adapters after the attention and MLP residual adds."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from peft_bench.backbones.base import Block
from peft_bench.layers.bottleneck import Bottleneck, trunc_normal_linears
from peft_bench.layers.depthwise import depthwise_conv2d
from peft_bench.layers.slots import SpatialSlot, TokenLayout
from peft_bench.methods.base import BlockInsertion
from peft_bench.methods.configs import MonaConfig, PrefixTokens

KERNEL_SIZES = (3, 5, 7)


class MultiCognitiveFilter(nn.Module):
    """Mona's filters on bottleneck tokens: a (B, H, W, n) map, or (B, P + H * W, n) tokens whose
    first P are prefix tokens (`TokenLayout`), the rest an H x W grid.

    `u = u + mean(dw3(u), dw5(u), dw7(u))`, then `u = u + conv1x1(u)`. The fast path keeps the
    tokens channels-last throughout: the depthwise convs read the (B, n, H, W) view of the tokens
    with its channels-last strides (no copy), and the 1x1 conv and its skip are one matmul on the
    tokens, `u (W + I)^T + b`, with the same parameters and gradients as the conv. Prefix tokens
    take the depthwise filters as a 1 x 1 map would (the kernels' centre taps and their bias) with
    `convpass`, or skip them with `bypass`; the 1x1 conv is theirs too.
    """

    def __init__(
        self, channels: int, merged: bool, prefix_tokens: PrefixTokens = PrefixTokens.convpass
    ) -> None:
        super().__init__()
        self.prefix_tokens = PrefixTokens(prefix_tokens)
        self.depthwise = nn.ModuleList(
            nn.Conv2d(channels, channels, k, padding=k // 2, groups=channels) for k in KERNEL_SIZES
        )
        self.pointwise = nn.Conv2d(channels, channels, 1)
        self.merged = merged
        self.register_buffer("identity", torch.eye(channels), persistent=False)

    def merged_depthwise(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The 7x7 kernel and bias of one depthwise conv equal to the mean of the three.

        Each kernel is zero-padded to 7x7, then kernels and biases are averaged. Computed from the
        three kernels on every call, so gradients flow to them. The identity skip stays a
        separate add.
        """
        size = max(KERNEL_SIZES)
        padded = [F.pad(conv.weight, [(size - conv.kernel_size[0]) // 2] * 4) for conv in self.depthwise]
        weight = torch.stack(padded).mean(dim=0)
        bias = torch.stack([conv.bias for conv in self.depthwise]).mean(dim=0)
        return weight, bias

    def _mean_depthwise(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean of the three depthwise convs of `u`, without their bias, and that bias."""
        if self.merged:
            weight, bias = self.merged_depthwise()
            return depthwise_conv2d(u, weight, weight.shape[-1] // 2), bias
        maps = [depthwise_conv2d(u, conv.weight, conv.kernel_size[0] // 2) for conv in self.depthwise]
        return sum(maps) / len(maps), sum(conv.bias for conv in self.depthwise) / len(maps)

    def _centre_taps(self) -> torch.Tensor:
        """The mean of the three kernels' centre taps: the depthwise filters on a 1 x 1 map."""
        return torch.stack(
            [conv.weight[:, 0, k // 2, k // 2] for conv, k in zip(self.depthwise, KERNEL_SIZES, strict=True)]
        ).mean(0)

    def forward(self, x: torch.Tensor, layout: TokenLayout | None = None) -> torch.Tensor:
        tokens = x.dim() == 3  # (B, P + H * W, n), laid out as `layout` says; else a (B, H, W, n) map
        if tokens and layout is None:
            raise ValueError("Mona's filter needs the layout of (B, N, n) tokens")
        grid = x[:, layout.prefix :].unflatten(1, layout.grid) if tokens else x
        u = grid.permute(0, 3, 1, 2)
        depthwise, depthwise_bias = self._mean_depthwise(u)
        u = (u + depthwise).permute(0, 2, 3, 1)
        # The skip, inside the matmul (under bf16 the diagonal 1 + w rounds to 2^-9, as the output does).
        pointwise = self.pointwise.weight.flatten(1) + self.identity
        # The depthwise bias rides the matmul too, `(u + c)(W + I)^T + b = u (W + I)^T + (b + (W + I) c)`:
        # a conv without bias has a cheaper backward.
        bias = torch.addmv(self.pointwise.bias, pointwise, depthwise_bias)
        out = F.linear(u, pointwise, bias)
        if not tokens:
            return out
        prefix = x[:, : layout.prefix]
        if self.prefix_tokens is PrefixTokens.convpass:
            prefix = F.linear(prefix + prefix * self._centre_taps(), pointwise, bias)
        else:
            prefix = F.linear(prefix, pointwise, self.pointwise.bias)
        return torch.cat([prefix, out.flatten(1, 2)], dim=1)

    def extra_repr(self) -> str:
        return f"merged={self.merged}, prefix_tokens={self.prefix_tokens.value}"


class ScaledLayerNorm(torch.autograd.Function):
    """`LN(x; weight, bias) + x * gammax` in fp32 (as autocast runs a LayerNorm): two passes over the
    tokens forward and three backward, where autograd's composition of the plain ops makes four and six."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, gammax: torch.Tensor, eps: float
    ) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            z, mean, rstd = torch.native_layer_norm(x, x.shape[-1:], weight, bias, eps)
            z.addcmul_(x, gammax)
        ctx.save_for_backward(x, weight, bias, gammax, mean, rstd)
        return z

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, bias, gammax, mean, rstd = ctx.saved_tensors
        needs_x, needs_weight, needs_bias, needs_gammax, _ = ctx.needs_input_grad
        with torch.autocast(grad.device.type, enabled=False):
            grad = grad.float()
            grad_x, grad_weight, grad_bias = torch.ops.aten.native_layer_norm_backward(
                grad, x, x.shape[-1:], mean, rstd, weight, bias, [needs_x, needs_weight, needs_bias]
            )
            if needs_x:
                grad_x.addcmul_(grad, gammax)
            grad_gammax = (grad * x).sum_to_size(gammax.shape) if needs_gammax else None
        return grad_x, grad_weight, grad_bias, grad_gammax, None


class MonaModule(SpatialSlot):
    """`x + up(drop(gelu(filters(down(LN(x) * gamma + x * gammax)))))` on tokens of width m laid out as
    `layout` says (a (B, H, W, m) map, or prefix tokens and a grid: `MultiCognitiveFilter`).

    Init as the reference code: gamma 1e-6, gammax 1, Linear layers trunc-normal(std 0.02) with
    zero bias, convs PyTorch's default; not zero-initialised.

    The forward is the formula's, with fewer passes over the tokens: gamma scales the
    LayerNorm's affine (m values) instead of its output, fused with `+ x * gammax`
    (`ScaledLayerNorm`), and dropout's 1/(1 - p) scales `up`'s weight instead of the activations,
    so the mask is a single multiply.
    """

    def __init__(
        self,
        dim: int,
        hidden: int,
        dropout: float,
        scalar_scales: bool,
        merged_conv: bool,
        prefix_tokens: PrefixTokens = PrefixTokens.convpass,
    ) -> None:
        super().__init__()
        scale_shape = () if scalar_scales else (dim,)
        self.norm = nn.LayerNorm(dim)
        self.gamma = nn.Parameter(torch.full(scale_shape, 1e-6))
        self.gammax = nn.Parameter(torch.ones(scale_shape))
        self.bottleneck = Bottleneck.linear(
            dim, hidden, dropout, mid=MultiCognitiveFilter(hidden, merged_conv, prefix_tokens)
        )
        trunc_normal_linears(self.bottleneck)

    def forward(self, x: torch.Tensor, layout: TokenLayout | None = None) -> torch.Tensor:
        norm, bottleneck = self.norm, self.bottleneck
        weight, bias = norm.weight * self.gamma, norm.bias * self.gamma
        z = ScaledLayerNorm.apply(x, weight, bias, self.gammax, norm.eps)
        h = bottleneck.act(bottleneck.mid(bottleneck.down(z), layout))
        return x + dropout_linear(h, bottleneck.up, bottleneck.drop.p if self.training else 0.0)


def dropout_linear(h: torch.Tensor, linear: nn.Linear, p: float) -> torch.Tensor:
    """`linear(dropout(h, p))`, the 1/(1 - p) rescaling folded into the (out, in) weight.

    Each element of `h` is kept with probability 1 - p, as `nn.Dropout`; the mask is drawn in fp32
    whatever the dtype of `h` (a bf16 draw would round p).
    """
    if not p:
        return linear(h)
    keep = torch.rand(h.shape, device=h.device) >= p
    return F.linear(h * keep, linear.weight / (1 - p), linear.bias)


class Mona(BlockInsertion):
    """Two Mona modules per block, on the main stream after each residual add.

    Slots `post_attn` and `post_mlp`. Per block: 2((2n + 5)m + n^2 + 88n) with vector scales.
    """

    config_class = MonaConfig
    cfg: MonaConfig

    def insert(self, block: Block) -> None:
        slots = block.slots
        slots.post_attn = self._module(block.dim)
        slots.post_mlp = self._module(block.dim)

    def _module(self, dim: int) -> MonaModule:
        cfg = self.cfg
        return MonaModule(dim, cfg.dim, cfg.dropout, cfg.scalar_scales, cfg.merged_conv, cfg.prefix_tokens)
