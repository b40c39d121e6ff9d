"""SSF: a per-channel scale and shift after the backbone's own operations, mergeable into them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import FunctionCtx

from peft_bench.backbones.base import Backbone, Part
from peft_bench.layers.merge import Mergeable
from peft_bench.methods.base import Method, freeze
from peft_bench.methods.configs import SSFConfig


class ScaleShift(Mergeable, nn.Module):
    """Mixin for a frozen Linear, Conv2d or LayerNorm: `scale * f(x) + shift` per output channel.

    The wrapper takes over the module's weight and bias Parameters, so their state-dict names
    (`attn.qkv.weight`, `norm1.bias`, ...) stay and pretrained checkpoints load unchanged. Because
    `f` is affine per output channel, `merge()` can fold the scale and shift into it.
    """

    channel_dims: ClassVar[int] = 0  # output dims after the channel dim: 2 for a conv's (B, C, H, W)
    # Never weight-decayed, whatever the recipe's rules: the reference trains them with timm's
    # optimiser, which exempts every tensor of one dimension (a decayed scale would shrink to 0).
    decay_exempt: ClassVar[tuple[str, ...]] = ("scale", "shift")
    weight: nn.Parameter
    bias: nn.Parameter

    def _adopt(self, module: nn.Module, std: float) -> None:
        """Take over `module`'s weight and bias; add a scale and a shift per output channel."""
        if module.bias is None:
            raise ValueError(f"SSF folds its shift into a bias; {module} has none")
        self.weight = module.weight
        self.bias = module.bias
        like = module.weight
        self.scale = nn.Parameter(torch.empty(like.shape[0], device=like.device, dtype=like.dtype))
        self.shift = nn.Parameter(torch.empty_like(self.scale))
        nn.init.normal_(self.scale, mean=1.0, std=std)
        nn.init.normal_(self.shift, mean=0.0, std=std)

    def _per_channel(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(-1, *(1,) * self.channel_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) if self.merged else self.scaled(x)

    def scaled(self, x: torch.Tensor) -> torch.Tensor:
        """`scale * f(x) + shift`, a pass over f's output (the patch embedding's conv, run once per
        image); the Linear and LayerNorm wrappers fold the scale and shift into f instead."""
        out = super().forward(x)
        # In the output's dtype: under autocast the fp32 scale would otherwise promote it to fp32.
        scale, shift = (self._per_channel(t).to(out.dtype) for t in (self.scale, self.shift))
        return out * scale + shift

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`weight' = scale * weight` (per output row) and `bias' = scale * bias + shift`."""
        weight = self.weight * self.scale.view(-1, *(1,) * (self.weight.dim() - 1))
        return weight, self.bias * self.scale + self.shift

    def fold(self) -> None:
        weight, bias = self.folded()
        self.weight.copy_(weight)
        self.bias.copy_(bias)

    def merge_targets(self) -> list[torch.Tensor]:
        return [self.weight, self.bias]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ssf, merged={self.merged}"


class ScaledLinear(torch.autograd.Function):
    """`scale * (x W^T + b) + shift` as one linear map with the scale folded into W and b.

    The forward is one GEMM and no pass over the output; the backward takes x's gradient through
    the folded weight (no pass scaling the output's gradient) and recovers `x W^T + b` from the
    output, `(y - shift) / scale`, for the scale's gradient, so the output is all it saves. Exact
    up to rounding while no scale is 0 (the recovered term's error grows as |shift| / |scale|;
    scales start at N(1, 0.02)); W and b are frozen, so they get no gradient.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        scale: torch.Tensor,
        shift: torch.Tensor,
    ) -> torch.Tensor:
        out = F.linear(x, weight * scale.unsqueeze(1), bias * scale + shift)  # under autocast: its dtype
        ctx.save_for_backward(out, weight, scale, shift)  # the folded weight is recomputed, not kept
        return out

    @staticmethod
    def backward(ctx: FunctionCtx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        out, weight, scale, shift = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out @ (weight * scale.unsqueeze(1)).to(grad_out.dtype)
        rows_grad, rows_out = grad_out.flatten(0, -2), out.flatten(0, -2)
        grad_shift = rows_grad.sum(0, dtype=shift.dtype)
        grad_scale = ((rows_grad * rows_out).sum(0, dtype=scale.dtype) - shift * grad_shift) / scale
        return grad_x, None, None, grad_scale, grad_shift


class SSFLinear(ScaleShift, nn.Linear):
    def __init__(self, linear: nn.Linear, std: float) -> None:
        # Built on the meta device: the base weight and bias are taken over, not allocated.
        super().__init__(linear.in_features, linear.out_features, device="meta")
        self._adopt(linear, std)

    def scaled(self, x: torch.Tensor) -> torch.Tensor:
        return ScaledLinear.apply(x, self.weight, self.bias, self.scale, self.shift)


class SSFConv2d(ScaleShift, nn.Conv2d):
    channel_dims = 2

    def __init__(self, conv: nn.Conv2d, std: float) -> None:
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            padding_mode=conv.padding_mode,
            device="meta",
        )
        self._adopt(conv, std)


class SSFLayerNorm(ScaleShift, nn.LayerNorm):
    def __init__(self, norm: nn.LayerNorm, std: float) -> None:
        super().__init__(norm.normalized_shape, eps=norm.eps, device="meta")
        self._adopt(norm, std)

    def scaled(self, x: torch.Tensor) -> torch.Tensor:
        """The scale and shift folded into the norm's own affine map: weight-sized, not a pass over
        the output (the norm's backward already reduces over tokens for its weight and bias)."""
        return F.layer_norm(x, self.normalized_shape, *self.folded(), self.eps)


def scale_shift(module: nn.Module, std: float) -> ScaleShift:
    """`module` wrapped with an SSF on its output channels."""
    for base, wrapper in ((nn.Linear, SSFLinear), (nn.Conv2d, SSFConv2d), (nn.LayerNorm, SSFLayerNorm)):
        if isinstance(module, base):
            return wrapper(module, std)
    raise TypeError(f"SSF wraps a Linear, Conv2d or LayerNorm, not {type(module).__name__}")


def ssf_targets(backbone: Backbone, after_transitions: bool) -> Iterator[str]:
    """The modules followed by an SSF, by name, in forward order: the patch embedding's conv and
    norm, with `after_transitions` the norm of each transition between stages (a patch merging's,
    not its bias-free reduction: `Backbone.outer_layers`), in every block norm1, qkv, proj, norm2,
    fc1 and fc2, and the output norm(s)."""
    yield from backbone.outer_layers(None)
    blocks = backbone.transformer_blocks()
    for stage in range(len(backbone.stage_dims)):
        if after_transitions:
            yield from backbone.outer_layers(stage)
        for block in (b for b in blocks if b.stage == stage):
            yield from (block.part_name(part) for part in Part)
    yield from backbone.head_norms()


class SSF(Method):
    """Scale and shift the features after the frozen backbone's linear maps, patch conv and norms.

    Placement (`ssf_targets`) and init (N(1, 0.02) scales, N(0, 0.02) shifts) as the reference
    code runs; per block 22m. Every SSF can be merged into the module it follows
    (`ScaleShift.merge`).
    """

    config_class = SSFConfig
    cfg: SSFConfig

    def apply(self, backbone: Backbone) -> None:
        freeze(backbone)
        after_transitions = self.cfg.after_transitions
        if after_transitions is None:
            after_transitions = backbone.ssf_after_transitions
        for name in list(ssf_targets(backbone, after_transitions)):
            parent, _, leaf = name.rpartition(".")
            owner = backbone.get_submodule(parent)
            setattr(owner, leaf, scale_shift(getattr(owner, leaf), self.cfg.init_std))
