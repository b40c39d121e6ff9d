"""A depthwise convolution whose weight gradient runs on oneDNN's fast forward kernel on the CPU.

oneDNN runs a depthwise conv's forward an order of magnitude faster than its weight gradient,
though both are the same multiply-adds (Mona's 7x7 filter on 8 x 56 x 56 x 64 channels-last tokens,
one thread: 1.7 ms forward, 23 ms weight gradient). That gradient is itself a depthwise conv: channel
c's is the cross-correlation of the padded input with the output gradient, summed over the images,
i.e. a conv of the padded input (each image's channels as channels, `groups` = images x C) with the
output gradient as its kernel, which oneDNN runs on its fast forward kernel (5 ms there; 3x faster
than its weight-gradient kernel from 14 x 14 to 32 x 32, 2x at 8 x 8). Same values, summed in
another order.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

# Images per forward-kernel call: as many as keep one call's padded input near the L2 cache (the
# speed falls by 4x on this CPU when a call reads 8 x 62 x 62 x 64 floats at once).
CHUNK_BYTES = 1 << 20
# Map positions from which the weight gradient is computed so: below, the custom backward's call
# overhead eats the gain (8 x 8 x 64, forward and backward: 0.53 ms either way on two threads).
MIN_POSITIONS = 16 * 16


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
    """`F.conv2d(x, weight, padding=padding, groups=C)` for a (C, 1, k, k) weight: the same function
    and gradients, the weight's computed by `depthwise_weight_grad` on the CPU in fp32 or fp64 for
    maps of 16 x 16 and more (below, a fraction of a millisecond that the custom backward's call
    overhead would exceed); elsewhere (CUDA, autocast, smaller maps) the plain conv."""
    fast = (
        x.device.type == "cpu"
        and x.dtype == weight.dtype
        and x.dtype in (torch.float32, torch.float64)
        and x.shape[-2] * x.shape[-1] >= MIN_POSITIONS
        and torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
    )
    if not fast:
        return F.conv2d(x, weight, padding=padding, groups=x.shape[1])
    return _DepthwiseConv2d.apply(x, weight, padding)


class _DepthwiseConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        return F.conv2d(x, weight, padding=padding, groups=x.shape[1])

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        needs_x, needs_weight, _ = ctx.needs_input_grad
        padding = ctx.padding
        grad_x = grad_weight = None
        if needs_x:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [1, 1], [padding] * 2, [1, 1], False, [0, 0], x.shape[1],
                [True, False, False],
            )[0]  # fmt: skip
        if needs_weight:
            grad_weight = depthwise_weight_grad(x, grad, padding)
        return grad_x, grad_weight, None


def depthwise_weight_grad(x: torch.Tensor, grad: torch.Tensor, padding: int) -> torch.Tensor:
    """The (C, 1, k, k) weight gradient of a stride-1 depthwise conv of `x` (B, C, H, W) whose output
    gradient is `grad` (B, C, H', W'): per chunk of images, a forward conv of the padded input with
    `grad` as the kernel."""
    channels = x.shape[1]
    padded = F.pad(x.permute(0, 2, 3, 1), [0, 0, padding, padding, padding, padding])  # (B, Hp, Wp, C)
    chunk = max(1, CHUNK_BYTES // (padded[0].numel() * padded.element_size()))
    partials = []
    for part, part_grad in zip(padded.split(chunk), grad.split(chunk), strict=True):
        n = len(part)
        # (1, n * C, Hp, Wp), channels-last: every image's channels side by side (no copy for n = 1).
        inputs = part.permute(1, 2, 0, 3).reshape(1, *part.shape[1:3], n * channels).permute(0, 3, 1, 2)
        kernel = part_grad.reshape(n * channels, 1, *grad.shape[2:])
        out = F.conv2d(inputs, kernel, groups=n * channels)  # (1, n * C, k, k)
        partials.append(out.view(n, channels, *out.shape[2:]).sum(0))
    return sum(partials).unsqueeze(1)
