"""The dense tasks' Swin as the reference builds it. Shifted-window attention on maps of any size
as the Swin detection and segmentation code computes it (pad to whole windows, then roll, with
the shift mask of the padded map), unchanged bit for bit where the map is a multiple of the window
(classification); the output norms, fresh or with the pretrained final norm."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformerBlock

from peft_bench.backbones import build_backbone
from peft_bench.backbones.swin import build_swin, run_block, windowed_attention
from peft_bench.config import BackboneConfig


def reference_attention(block: SwinTransformerBlock, x: torch.Tensor) -> torch.Tensor:
    """The Swin detection code's order, written out: pad right and bottom to whole windows, roll by
    -shift, window attention with the mask of the padded map's nine regions, reverse, roll back, crop."""
    batch, height, width, channels = x.shape
    window, shift = block.window_size[0], block.shift_size[0]
    padded_h, padded_w = math.ceil(height / window) * window, math.ceil(width / window) * window
    x = F.pad(x, (0, 0, 0, padded_w - width, 0, padded_h - height))
    mask = None
    if shift:
        x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        regions = torch.zeros(padded_h, padded_w)
        bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
        for i, (rows, cols) in enumerate((r, c) for r in bounds for c in bounds):
            regions[rows, cols] = i
        windows = _partition(regions[None, :, :, None], window).squeeze(-1)
        mask = (windows[:, None, :] != windows[:, :, None]).float() * -100.0
    out = block.attn(_partition(x, window), mask=mask)
    out = out.view(batch, padded_h // window, padded_w // window, window, window, channels)
    out = out.permute(0, 1, 3, 2, 4, 5).reshape(batch, padded_h, padded_w, channels)
    if shift:
        out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
    return out[:, :height, :width]


def _partition(x: torch.Tensor, window: int) -> torch.Tensor:
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window, window, width // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, channels)


def dense_swin_t() -> list[SwinTransformerBlock]:
    torch.manual_seed(0)
    cfg = BackboneConfig(name="swin_t", weights="none", always_partition=True)
    return [block.module for block in build_backbone(cfg, dynamic_size=True).transformer_blocks()]


@pytest.mark.parametrize(("height", "width"), [(10, 13), (12, 12), (16, 16), (7, 9), (32, 23)])
def test_attention_equals_the_reference_order_on_maps_that_are_not_whole_windows(
    height: int, width: int
) -> None:
    blocks = dense_swin_t()
    for block in (blocks[0], blocks[1], blocks[-1]):  # unshifted, shifted, the last (shifted) block
        block.eval()
        x = torch.randn(2, height, width, block.dim)
        with torch.no_grad():
            torch.testing.assert_close(windowed_attention(block, x), reference_attention(block, x))


def test_no_token_attends_across_the_image_edge() -> None:
    """In a shifted block, the rows rolled from the top edge must not see the image's bottom rows.
    On 12 rows (window 7, shift 3, padded to 14), rolling first and padding after would put rows
    0-1 beside rows 10-11 in one mask region; padded first, rows 0-2 sit at 11-13 beside padding
    only, so a change of row 0 reaches rows 0-2 and no other."""
    block = dense_swin_t()[1].eval()
    assert block.shift_size == (3, 3)
    x = torch.randn(1, 12, 12, block.dim)
    changed = x.clone()
    changed[:, 0] += 1.0
    with torch.no_grad():
        before, after = windowed_attention(block, x), windowed_attention(block, changed)
    torch.testing.assert_close(after[:, 3:], before[:, 3:], rtol=0, atol=0)
    assert not torch.allclose(after[:, :3], before[:, :3])


def test_classification_at_224_is_bit_identical_to_timms_blocks() -> None:
    torch.manual_seed(0)
    swin = build_swin("swin_t").eval()
    timm_body = copy.deepcopy(swin)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ours = swin.forward_stages(x)
        tokens = timm_body.patch_embed(x)
        for stage, expected in zip(timm_body.layers, ours, strict=True):
            tokens = stage(tokens)  # timm's own stage forward, blocks and all
            assert torch.equal(tokens, expected)


def test_a_block_runs_the_padded_attention_with_or_without_method_slots() -> None:
    block = dense_swin_t()[1].eval()
    x = torch.randn(1, 10, 13, block.dim)
    with torch.no_grad():
        attn = reference_attention(block, block.norm1(x))
        mid = x + attn
        expected = mid + block.mlp(block.norm2(mid))
        torch.testing.assert_close(run_block(block, x), expected)


@pytest.mark.parametrize("fresh", [True, False])
def test_output_norms_start_fresh_or_take_the_final_norm(fresh: bool) -> None:
    swin = build_swin("swin_micro")  # the shipped weights are loaded by build_backbone; perturb instead
    with torch.no_grad():
        swin.norm.weight.uniform_(0.5, 1.5)
        swin.norm.bias.uniform_(-0.5, 0.5)
    final = {k: v.clone() for k, v in swin.norm.state_dict().items()}
    swin.use_output_norms(fresh=fresh)
    assert len(swin.output_norms) == 4
    for norm in swin.output_norms[:3]:
        assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and not norm.bias.any()
    last = swin.output_norms[3]
    if fresh:
        assert torch.equal(last.weight, torch.ones_like(last.weight)) and not last.bias.any()
    else:
        assert torch.equal(last.weight, final["weight"]) and torch.equal(last.bias, final["bias"])
