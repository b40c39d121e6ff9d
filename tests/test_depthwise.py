"""`depthwise_conv2d`: the plain depthwise conv's values and gradients, its weight gradient computed
as a forward conv on the CPU, the plain conv wherever that is not taken; the FLOPs counted alike."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from peft_bench.engine.flops import counting
from peft_bench.layers import depthwise
from peft_bench.layers.depthwise import depthwise_conv2d


def inputs(
    images: int, side: int, channels: int, kernel: int, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A channels-last (B, C, H, W) view as Mona's tokens give it, a (C, 1, k, k) weight, a gradient."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(images, side, side + 3, channels, generator=generator, dtype=dtype).permute(0, 3, 1, 2)
    weight = torch.randn(channels, 1, kernel, kernel, generator=generator, dtype=dtype)
    grad = torch.randn(x.shape, generator=generator, dtype=dtype)
    return x.requires_grad_(), weight.requires_grad_(), grad


def value_and_grads(
    conv: Callable[..., torch.Tensor], x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor, padding: int
) -> tuple[torch.Tensor, ...]:
    out = conv(x, weight, padding)
    return (out, *torch.autograd.grad(out, (x, weight), grad))


def plain(x: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
    return F.conv2d(x, weight, padding=padding, groups=x.shape[1])


@pytest.mark.parametrize("per_chunk", [1, 2, 5])  # images per forward call: 5 images in 5, 3 or 1 calls
@pytest.mark.parametrize("kernel", [3, 7])
def test_values_and_gradients_equal_the_plain_convs(
    monkeypatch: pytest.MonkeyPatch, per_chunk: int, kernel: int
) -> None:
    x, weight, grad = inputs(5, 18, 12, kernel)
    padded_image_bytes = (18 + kernel - 1) * (21 + kernel - 1) * 12 * 4
    monkeypatch.setattr(depthwise, "CHUNK_BYTES", per_chunk * padded_image_bytes)
    ours = value_and_grads(depthwise_conv2d, x, weight, grad, kernel // 2)
    assert type(ours[0].grad_fn).__name__ == "_DepthwiseConv2dBackward"
    for got, expected in zip(ours, value_and_grads(plain, x, weight, grad, kernel // 2), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)  # sums of ~2,000 terms of size 1


def test_gradcheck_in_double() -> None:
    x, weight, _ = inputs(3, 16, 2, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: depthwise_conv2d(a, b, 1), (x, weight))


@pytest.mark.parametrize("case", ["small map", "autocast", "no grad", "bf16"])
def test_elsewhere_the_plain_conv(case: str) -> None:
    side = 8 if case == "small map" else 18
    dtype = torch.bfloat16 if case == "bf16" else torch.float32
    x, weight, _ = inputs(2, side, 4, 3, dtype=dtype)
    with torch.autocast("cpu", enabled=case == "autocast"), torch.set_grad_enabled(case != "no grad"):
        out, expected = depthwise_conv2d(x, weight, 1), plain(x, weight, 1)
    assert out.grad_fn is None or type(out.grad_fn).__name__ == "ConvolutionBackward0"
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_flops_counted_as_the_plain_convs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The weight gradient as a forward conv counts the multiply-adds of the plain backward's."""
    monkeypatch.setattr(depthwise, "CHUNK_BYTES", 1)
    counts = []
    for conv in (depthwise_conv2d, plain):
        x, weight, grad = inputs(3, 18, 8, 7)
        with counting() as count:
            value_and_grads(conv, x, weight, grad, 3)
        counts.append(count.flops)
    assert counts[0] == counts[1] == 3 * (18 * 21) * 8 * 49 * 2 * 3  # forward, input and weight gradients
