"""VPT-deep as the Mona authors' Swin VPT places it: counts, init, what trains, the block's math, a run."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from test_methods import ARCHS, applied, images, micro, trainable_count

from peft_bench.backbones.swin import build_swin, run_block
from peft_bench.layers.slots import slots_of

P = 49  # the reference's NUM_PROMPTS


def formula_count(size: str, prompts: int = P) -> int:
    """P * m per block, summed over the stages (width embed * 2**s)."""
    embed, depths = ARCHS[size]
    return sum(depth * prompts * embed * 2**s for s, depth in enumerate(depths))


@pytest.mark.parametrize("size", list(ARCHS))
def test_trainable_count_is_prompts_times_width_per_block(size: str) -> None:
    with torch.device("meta"):
        backbone = applied(build_swin(size), "vpt")
    assert trainable_count(backbone) == formula_count(size)
    assert {"swin_t": 216_384, "swin_b": 589_568, "swin_l": 884_352}[size] == formula_count(size)


def test_prompts_start_uniform_within_one_bound_from_the_stage0_width() -> None:
    """uniform(+-sqrt(6 / (3 * 4 * 4 + C))) in every block, C = 32 for swin_micro at every stage."""
    bound = math.sqrt(6 / (3 * 16 + 32))
    backbone = applied(micro(), "vpt", prompts=7)
    for block in (b.module for b in backbone.transformer_blocks()):
        tokens = slots_of(block).attn_prefix.tokens
        assert tokens.shape == (7, block.dim)
        assert tokens.abs().max() <= bound and tokens.abs().max() > 0.9 * bound


def test_the_prompts_are_one_tensor_per_block() -> None:
    """What trains, and that frozen tensors stay, is checked for every method in test_methods."""
    backbone = applied(micro(), "vpt")
    trainable = [n for n, p in backbone.named_parameters() if p.requires_grad]
    assert len(trainable) == 8 and all(n.endswith("slots.attn_prefix.tokens") for n in trainable)


def test_no_prompts_leave_the_backbone_as_it_was() -> None:
    base = micro().eval()
    backbone = applied(copy.deepcopy(base), "vpt", prompts=0).eval()
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), base(x), rtol=1e-5, atol=1e-5)


def reference_block(block, x: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """The reference's prompted Swin block written out window by window: norm1, pad, roll; each
    window's tokens after the P prompts (not normed); attention over all P + N tokens with the
    relative position bias and the shift mask between window tokens only (zeros on prompt rows and
    columns); the prompt rows dropped; roll back, crop, residual, MLP."""
    attn, heads = block.attn, block.attn.num_heads
    window, shift = block.window_size[0], block.shift_size[0]
    batch, height, width, dim = x.shape
    h = F.pad(block.norm1(x), (0, 0, 0, -width % window, 0, -height % window))
    rows, cols = h.shape[1:3]
    region = torch.zeros(rows, cols)  # the shift mask's regions on the padded map
    if shift:
        h = torch.roll(h, (-shift, -shift), (1, 2))

        def cuts(n: int) -> list[slice]:
            return [slice(0, n - window), slice(n - window, n - shift), slice(n - shift, n)]

        for label, (r, c) in enumerate(itertools.product(cuts(rows), cuts(cols))):
            region[r, c] = label
    p, n = len(prompts), window * window
    bias = attn._get_rel_pos_bias()[0]  # (heads, N, N)
    out = torch.empty_like(h)
    for b, i, j in itertools.product(range(batch), range(0, rows, window), range(0, cols, window)):
        tokens = torch.cat([prompts, h[b, i : i + window, j : j + window].reshape(n, dim)])
        q, k, v = attn.qkv(tokens).reshape(p + n, 3, heads, -1).permute(1, 2, 0, 3)
        labels = region[i : i + window, j : j + window].reshape(n)
        full_bias = torch.zeros(heads, p + n, p + n)
        full_bias[:, p:, p:] = bias + torch.where(labels[:, None] == labels[None, :], 0.0, -100.0)
        mixed = ((q @ k.transpose(-2, -1)) * attn.scale + full_bias).softmax(-1) @ v
        tokens_out = attn.proj(mixed.transpose(0, 1).reshape(p + n, dim))[p:]
        out[b, i : i + window, j : j + window] = tokens_out.view(window, window, dim)
    if shift:
        out = torch.roll(out, (shift, shift), (1, 2))
    y = x + out[:, :height, :width]
    return y + block.mlp(block.norm2(y))


@pytest.mark.parametrize("index, side", [(0, 8), (1, 10)])  # unshifted; shifted on a padded map
def test_block_output_equals_the_reference_written_out(index: int, side: int) -> None:
    torch.manual_seed(0)
    backbone = applied(build_swin("swin_micro", dynamic_size=True), "vpt", prompts=3).eval()
    block = backbone.layers[0].blocks[index]
    prompts = slots_of(block).attn_prefix.tokens
    x = torch.randn(2, side, side, block.dim)
    with torch.no_grad():
        got = run_block(block, x)
        torch.testing.assert_close(got, reference_block(block, x, prompts), rtol=1e-4, atol=1e-5)
        # the comparison can tell prompts that skip norm1 from normed ones, and from none at all
        assert not torch.allclose(got, reference_block(block, x, block.norm1(prompts)), atol=1e-3)
        assert not torch.allclose(got, reference_block(block, x, prompts[:0]), atol=1e-3)
