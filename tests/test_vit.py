"""The ViT family behind the contract: timm's forward where no slot is set, the slots where they are,
Mona's two treatments of prefix tokens, prompts as extra tokens, the pyramid, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F
from conftest import records, run_cli
from hydra import compose
from torch import nn

from peft_bench.backbones import build_backbone, weights
from peft_bench.backbones.vit import SimpleFeaturePyramid, ViTBackbone, build_vit
from peft_bench.builder import build_tuned_backbone
from peft_bench.config import BackboneConfig
from peft_bench.errors import UserError
from peft_bench.layers.slots import TokenLayout, slots_of
from peft_bench.methods.mona import KERNEL_SIZES, MonaModule, PrefixTokens
from peft_bench.plugins import config_session


def vit(**options: object) -> ViTBackbone:
    torch.manual_seed(0)
    backbone = build_vit("vit_micro", **options)
    with torch.no_grad():  # every tensor away from its init, so that a misplaced one shows
        for p in backbone.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return backbone.eval()


def timm_twin(backbone: ViTBackbone) -> nn.Module:
    """timm's own VisionTransformer of vit_micro's architecture with the backbone's tensors."""
    body = timm.create_model(
        "vit_tiny_patch16_224", num_classes=0, img_size=64, embed_dim=128, depth=6, num_heads=4, patch_size=8
    )
    body.load_state_dict(backbone.state_dict())
    return body.eval()


def test_the_empty_slot_vit_is_timms_forward_features_bit_for_bit() -> None:
    backbone = vit()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(backbone.forward_features(x), timm_twin(backbone).forward_features(x))
        assert torch.equal(backbone(x), timm_twin(backbone)(x))  # the class token after the final norm


def test_a_block_with_empty_slots_is_timms_block_forward_bit_for_bit() -> None:
    """The slotted path (forced by empty slots and taps) computes timm's `Block.forward`."""
    backbone = vit()
    block = backbone.transformer_blocks()[1]
    slots_of(block.module)  # empty slots: the slotted path, nothing in it
    x = torch.randn(2, 65, 128)
    taps: list = []
    with torch.no_grad():
        ours = backbone.run_block(block, x, TokenLayout((8, 8), 1), taps)
        assert torch.equal(ours, timm.models.vision_transformer.Block.forward(block.module, x))
    assert len(taps) == 1 and taps[0][0].shape == x.shape


def test_a_dense_vit_takes_any_size_padded_to_whole_patches_with_a_resampled_position_table() -> None:
    backbone = vit(dynamic_size=True)
    backbone.use_output_norms()
    [features] = backbone.forward_pyramid(torch.randn(1, 3, 70, 90))  # padded to 72 x 96: a 9 x 12 grid
    assert features.shape == (1, 128, 9, 12)
    same = backbone.forward_pyramid(torch.randn(1, 3, 64, 64))[0]
    assert same.shape == (1, 128, 8, 8)


def test_the_simple_feature_pyramid_makes_strides_4_to_32_from_the_one_map() -> None:
    for patch, widths in ((16, (32, 64, 128, 128)), (8, (64, 128, 128, 128))):
        pyramid = SimpleFeaturePyramid(128, patch, (0, 1, 2, 3))
        side = 256 // patch
        levels = pyramid([torch.randn(2, 128, side, side)])
        assert [tuple(level.shape[1:]) for level in levels] == [
            (w, 256 // stride, 256 // stride) for w, stride in zip(widths, (4, 8, 16, 32), strict=True)
        ]
        assert pyramid.channels == widths
    assert len(SimpleFeaturePyramid(128, 16, (1, 2, 3)).scales) == 3  # only the levels a head reads


def mona_on_tokens(
    module: MonaModule, x: torch.Tensor, layout: TokenLayout, option: PrefixTokens
) -> torch.Tensor:
    """docs/methods.md's Mona on a ViT's tokens, op by op: the grid tokens as a map through three
    separate depthwise convs, the prefix tokens each as a 1 x 1 map through them (convpass) or not at
    all (bypass); the 1x1 conv on every token."""
    b, f = module.bottleneck, module.bottleneck.mid
    z = F.layer_norm(x, x.shape[-1:], module.norm.weight, module.norm.bias) * module.gamma + x * module.gammax
    u = F.linear(z, b.down.weight, b.down.bias)
    prefix, grid = u[:, : layout.prefix], u[:, layout.prefix :].unflatten(1, layout.grid).permute(0, 3, 1, 2)

    def depthwise_mean(maps: torch.Tensor) -> torch.Tensor:
        convs = [
            F.conv2d(maps, c.weight, c.bias, padding=k // 2, groups=maps.shape[1])
            for c, k in zip(f.depthwise, KERNEL_SIZES, strict=True)
        ]
        return sum(convs) / 3

    grid = grid + depthwise_mean(grid)
    grid = grid + F.conv2d(grid, f.pointwise.weight, f.pointwise.bias)
    if option is PrefixTokens.convpass:
        as_maps = prefix.reshape(-1, prefix.shape[-1], 1, 1)  # each token a 1 x 1 map
        prefix = prefix + depthwise_mean(as_maps).reshape(prefix.shape)
    prefix = prefix + F.linear(prefix, f.pointwise.weight.flatten(1), f.pointwise.bias)
    u = torch.cat([prefix, grid.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)
    return x + F.linear(F.gelu(u), b.up.weight, b.up.bias)


@pytest.mark.parametrize("option", list(PrefixTokens))
@pytest.mark.parametrize("merged", [True, False])
def test_mona_on_a_vit_treats_prefix_tokens_as_its_option_says(option: PrefixTokens, merged: bool) -> None:
    torch.manual_seed(0)
    module = MonaModule(
        48, 16, dropout=0.1, scalar_scales=False, merged_conv=merged, prefix_tokens=option
    ).eval()
    with torch.no_grad():
        module.gamma.normal_()
        for conv in module.bottleneck.mid.depthwise:
            conv.bias.normal_()  # a visible bias: bypass must not give it to the prefix tokens
    layout = TokenLayout((5, 7), prefix=2)
    x = torch.randn(3, 2 + 35, 48)
    with torch.no_grad():
        torch.testing.assert_close(module(x, layout), mona_on_tokens(module, x, layout, option))


def test_the_two_prefix_options_differ_only_on_the_prefix_tokens() -> None:
    modules = {}
    for option in PrefixTokens:
        torch.manual_seed(0)
        modules[option] = MonaModule(48, 16, 0.0, False, True, option).eval()
    layout, x = TokenLayout((4, 4), prefix=1), torch.randn(2, 17, 48)
    with torch.no_grad():
        outs = [modules[option](x, layout) for option in PrefixTokens]
    assert torch.equal(outs[0][:, 1:], outs[1][:, 1:]) and not torch.equal(outs[0][:, :1], outs[1][:, :1])


def test_vpt_on_a_vit_is_vpts_prompts_in_the_sequence() -> None:
    """VPT's ViT: prompts after the class token, normed by norm1 with the tokens, their outputs
    dropped; the block is timm's on [cls, prompts, patches], sliced back."""
    with config_session():
        cfg = compose(
            "config", ["backbone=vit_micro", "backbone.weights=none", "method=vpt", "method.prompts=5"]
        )
    torch.manual_seed(0)
    backbone = build_tuned_backbone(cfg).eval()
    block = backbone.transformer_blocks()[2]
    prompts = slots_of(block.module).attn_prefix.tokens
    assert prompts.shape == (5, 128) and slots_of(block.module).attn_prefix_normed is False
    x = torch.randn(2, 65, 128)
    joined = torch.cat([x[:, :1], prompts.expand(2, -1, -1), x[:, 1:]], dim=1)
    with torch.no_grad():
        expected = timm.models.vision_transformer.Block.forward(block.module, joined)
        expected = torch.cat([expected[:, :1], expected[:, 6:]], dim=1)
        # the prompts' own rows pass the MLP in VPT's code too, but are dropped: only the others compare
        torch.testing.assert_close(backbone.run_block(block, x, TokenLayout((8, 8), 1), None), expected)


def test_bad_sizes_and_swin_options_are_user_errors() -> None:
    with pytest.raises(UserError, match=r"vit_micro cuts images into 8 x 8 patches: backbone.img_size=60"):
        build_backbone(BackboneConfig(name="vit_micro", weights="none", img_size=60))
    with pytest.raises(UserError, match=r"backbone.window_size=7 is a Swin option"):
        build_backbone(BackboneConfig(name="vit_micro", weights="none", window_size=7))
    with pytest.raises(UserError, match=r"multiples of its patch 8, not 60 x 64"):
        build_backbone(BackboneConfig(name="vit_micro", weights="none"))(torch.randn(1, 3, 60, 64))
    with pytest.raises(UserError, match=r"Unknown backbone 'vit_q'.*vit_b"):
        build_backbone(BackboneConfig(name="vit_q"))
    with pytest.raises(
        UserError, match=r"vit_micro has no hub weights named 'in22k'.*use backbone.weights=none, mini"
    ):
        build_backbone(BackboneConfig(name="vit_micro", weights="in22k"))


def test_google_npz_and_timm_files_load_the_same_function(tmp_path: Path) -> None:
    """A `ViT-B_16.npz`-style file (Google's names, as big_vision and the original release write
    them) through timm's loader, and the same weights as a timm state dict."""
    saved = vit()
    torch.save(saved.state_dict(), tmp_path / "timm.pth")
    np.savez(tmp_path / "google.npz", **google_npz(saved))
    x = torch.randn(2, 3, 64, 64)
    for name in ("timm.pth", "google.npz"):
        loaded = build_backbone(BackboneConfig(name="vit_micro", weights=str(tmp_path / name))).eval()
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), saved(x))


def google_npz(backbone: ViTBackbone) -> dict[str, np.ndarray]:
    """The backbone's tensors in the JAX checkpoint layout of Google's ViT release."""
    sd = {k: v.detach().numpy() for k, v in backbone.state_dict().items()}
    out = {
        "embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": sd["patch_embed.proj.bias"],
        "cls": sd["cls_token"],
        "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
        "Transformer/encoder_norm/scale": sd["norm.weight"],
        "Transformer/encoder_norm/bias": sd["norm.bias"],
    }
    heads, dim = 4, 128
    for i in range(6):
        p, b = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        out[p + "LayerNorm_0/scale"], out[p + "LayerNorm_0/bias"] = (
            sd[b + "norm1.weight"],
            sd[b + "norm1.bias"],
        )
        out[p + "LayerNorm_2/scale"], out[p + "LayerNorm_2/bias"] = (
            sd[b + "norm2.weight"],
            sd[b + "norm2.bias"],
        )
        qkv_w, qkv_b = sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"]
        for j, name in enumerate(("query", "key", "value")):
            w = qkv_w[j * dim : (j + 1) * dim]  # (out, in)
            out[p + f"MultiHeadDotProductAttention_1/{name}/kernel"] = w.T.reshape(dim, heads, dim // heads)
            out[p + f"MultiHeadDotProductAttention_1/{name}/bias"] = qkv_b[j * dim : (j + 1) * dim].reshape(
                heads, -1
            )
        proj = sd[b + "attn.proj.weight"]
        out[p + "MultiHeadDotProductAttention_1/out/kernel"] = proj.T.reshape(heads, dim // heads, dim)
        out[p + "MultiHeadDotProductAttention_1/out/bias"] = sd[b + "attn.proj.bias"]
        for j, fc in enumerate(("fc1", "fc2")):
            out[p + f"MlpBlock_3/Dense_{j}/kernel"] = sd[b + f"mlp.{fc}.weight"].T
            out[p + f"MlpBlock_3/Dense_{j}/bias"] = sd[b + f"mlp.{fc}.bias"]
    return out


TINY = [
    "data.train_size=4",
    "data.val_size=2",
    "data.test_size=2",
    "data.batch_size=2",
    "data.image_size=64",
    "trainer.max_steps=2",
    "trainer.epochs=1",
    "trainer.threads=1",
    "trainer.progress=false",
]
DENSE_SIZES = ["head.min_size=[64]", "head.max_size=64"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("dataset", "method"),
    [("shapes", "mona"), ("shapes_det", "lora"), ("shapes_seg", "vpt"), ("shapes_inst", "e3va")],
)
def test_a_vit_runs_every_task_from_the_command_line(dataset: str, method: str, results_dir: Path) -> None:
    sizes = DENSE_SIZES if dataset != "shapes" else []
    result = run_cli(
        f"dataset={dataset}", f"method={method}", "backbone=vit_micro", *TINY, *sizes, results_dir=results_dir
    )
    assert result.returncode == 0, result.stderr
    [record] = records(results_dir)
    assert (record["status"], record["backbone"], record["steps"]) == ("completed", "vit_micro", 2)


def test_hub_weights_load_from_the_hf_cache_without_the_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`backbone.weights=augreg_in21k` through timm's hub loader, from the cached file (offline), its
    position table resampled to the build's grid."""
    released = timm.create_model("vit_tiny_patch16_224", num_classes=0)  # the hub file's layout
    cached = tmp_path / "model.safetensors"
    safetensors.torch.save_file(released.state_dict(), cached)
    monkeypatch.setattr(weights, "cached_hub_file", lambda model: cached)
    loaded = build_backbone(BackboneConfig(name="vit_t", weights="augreg_in21k", img_size=64))
    block = "blocks.3.attn.qkv.weight"
    assert torch.equal(loaded.state_dict()[block], released.state_dict()[block])
    assert loaded.pos_embed.shape == (1, 1 + 4 * 4, 192)  # 14 x 14 resampled to 4 x 4
