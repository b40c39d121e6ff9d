"""The token-level slot: prefix tokens that every window of a block attends to (VPT-deep's place)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from peft_bench.backbones.swin import build_swin, run_block
from peft_bench.layers.slots import slots_of


class Prefix(nn.Module):
    """`count` learnable tokens of width `dim`, the same for every image."""

    def __init__(self, count: int, dim: int) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.randn(count, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens


def blocks(dynamic: bool):
    torch.manual_seed(0)
    swin = build_swin("swin_micro", dynamic_size=dynamic).eval()
    return swin.layers[0].blocks  # swin_micro: window 4, block 1 shifted by 2


@pytest.mark.parametrize("dynamic, side", [(False, 16), (True, 18)])
@pytest.mark.parametrize("index", [0, 1])
def test_an_empty_prefix_leaves_the_block_as_timm_computes_it(dynamic: bool, side: int, index: int) -> None:
    """With no prefix token the prefixed path is the plain one: same windows, shift, padding, mask."""
    block = blocks(dynamic)[index]
    x = torch.randn(2, side, side, block.dim)
    expected = run_block(block, x)
    slots_of(block).attn_prefix = Prefix(0, block.dim)
    torch.testing.assert_close(run_block(block, x), expected, rtol=1e-5, atol=1e-5)


def test_prefix_tokens_enter_every_window_as_keys_and_values() -> None:
    """The unshifted block's attention, written out window by window: each window's queries over the
    normed prefix tokens (zero position bias) and its own tokens (timm's relative position bias)."""
    block = blocks(False)[0]
    attn, heads, window = block.attn, block.attn.num_heads, block.window_size[0]
    prefix = Prefix(3, block.dim)
    slots_of(block).attn_prefix = prefix
    x = torch.randn(2, 8, 8, block.dim)
    with torch.no_grad():
        got = run_block(block, x)

        normed, tokens = block.norm1(x), block.norm1(prefix.tokens)
        bias = attn._get_rel_pos_bias()[0]  # (heads, N, N)
        expected_attn = torch.empty_like(x)
        for b in range(2):
            for i in range(0, 8, window):
                for j in range(0, 8, window):
                    own = normed[b, i : i + window, j : j + window].reshape(-1, block.dim)
                    q, _, _ = attn.qkv(own).reshape(len(own), 3, heads, -1).permute(1, 2, 0, 3)
                    _, k, v = (
                        attn.qkv(torch.cat([tokens, own]))
                        .reshape(len(own) + 3, 3, heads, -1)
                        .permute(1, 2, 0, 3)
                    )
                    logits = q @ k.transpose(-2, -1) * attn.scale
                    logits = logits + torch.cat([torch.zeros(heads, len(own), 3), bias], dim=-1)
                    out = (logits.softmax(-1) @ v).transpose(0, 1).reshape(len(own), -1)
                    expected_attn[b, i : i + window, j : j + window] = attn.proj(out).view(window, window, -1)
        y = x + expected_attn
        expected = y + block.mlp(block.norm2(y))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_prefix_changes_the_output_and_trains_alone() -> None:
    block = blocks(True)[1]
    block.requires_grad_(False)
    x = torch.randn(1, 10, 10, block.dim)
    plain = run_block(block, x)
    prefix = Prefix(2, block.dim)
    slots_of(block).attn_prefix = prefix
    out = run_block(block, x)
    assert not torch.allclose(out, plain)
    out.square().sum().backward()
    assert prefix.tokens.grad is not None and prefix.tokens.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in block.named_parameters() if not n.startswith("slots."))


def test_per_image_prefixes_reach_only_their_image() -> None:
    """(B, P, C) tokens: image b's windows see image b's tokens only."""
    block = blocks(False)[0]
    tokens = torch.randn(2, 3, block.dim)
    x = torch.randn(2, 8, 8, block.dim)

    class PerImage(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return tokens

    slots_of(block).attn_prefix = PerImage()
    with torch.no_grad():
        both = run_block(block, x)
        shared = Prefix(3, block.dim)
        shared.tokens.data = tokens[1]
        slots_of(block).attn_prefix = shared
        second = run_block(block, x[1:])
    torch.testing.assert_close(both[1:], second, rtol=1e-5, atol=1e-5)
