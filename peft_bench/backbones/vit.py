"""The ViT family behind the backbone contract, over timm's `VisionTransformer`.

`ViTBackbone` re-registers timm's embedding (`patch_embed`, `cls_token`, `reg_token`,
`pos_embed`, `norm_pre`), `blocks` and `norm` under their timm names, so its state dict is a timm
state dict without the head, and every timm checkpoint (hub, `.pth`, `.safetensors`, Google's
`.npz`) loads as timm loads it. Tokens are (B, prefix + H * W, C): the class token and any
registers first (`TokenLayout.prefix`), then the patch grid. A ViT has one stage; its dense
layout normalises the last block's output once, and the pyramid's four levels (strides 4-32)
are made from that one map by ViTDet's simple feature pyramid (`SimpleFeaturePyramid`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import timm
import torch
from timm.layers import LayerNorm2d, global_pool_nlc, resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import nn

from peft_bench.backbones.base import Backbone, Block, Pyramid, Tensors, backbone_entry
from peft_bench.backbones.sizes import VIT_SPECS, ViTSpec
from peft_bench.backbones.weights import (
    HubWeights,
    first_line,
    from_hub,
    key_problems,
    read_state_dict,
    resolve_weights,
    shape_problems,
)
from peft_bench.config import BackboneConfig
from peft_bench.errors import UserError
from peft_bench.layers.slots import EMPTY_SLOTS, Branches, TokenLayout, prefix_tokens, run_slotted

log = logging.getLogger(__name__)

POOLS = ("token", "avg")  # the pooled features a ViTBackbone supports: the class token, or the patch mean


class SimpleFeaturePyramid(Pyramid):
    """ViTDet's simple feature pyramid (Li et al., 2022) up to its output convolutions: the ViT's one
    map at stride p is brought to each level's stride 4 * 2^l by transposed 2x2 convolutions that
    halve the width (LayerNorm and GELU between two of them), or by max pooling; the head's own neck
    (FPN, UperNet) follows, as mmseg's ViT-UperNet follows its multi-level neck. A patch that is not
    a power of two (14) gives the nearest power-of-two scales (strides 3.5, 7, 14, 28)."""

    def __init__(self, dim: int, patch: int, levels: Sequence[int]) -> None:
        super().__init__()
        resamplers = [self._resampler(dim, round(math.log2(patch / (4 * 2**level)))) for level in levels]
        self.scales = nn.ModuleList(module for module, _ in resamplers)
        self.channels = tuple(channels for _, channels in resamplers)

    @staticmethod
    def _resampler(dim: int, steps: int) -> tuple[nn.Module, int]:
        """`steps` > 0: that many transposed convolutions; < 0: pooling by 2^-steps; the width it gives."""
        if steps <= 0:
            return (nn.MaxPool2d(2**-steps) if steps else nn.Identity()), dim
        layers: list[nn.Module] = []
        for step in range(steps):
            if step:
                layers += [LayerNorm2d(dim), nn.GELU()]
            layers.append(nn.ConvTranspose2d(dim, dim // 2, 2, stride=2))
            dim //= 2
        return nn.Sequential(*layers), dim

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        (last,) = maps
        return [scale(last) for scale in self.scales]


def run_vit_block(
    block: nn.Module, x: torch.Tensor, layout: TokenLayout | None, taps: list[Branches] | None = None
) -> torch.Tensor:
    """timm's ViT `Block.forward` (global attention, layer scales) with the block's slots where set;
    with `taps`, its branch outputs are appended (a side network's). Prefix tokens of the slots
    (prompts) join the attention as extra tokens whose outputs are dropped. Any family built of
    timm's ViT blocks runs them with it (the PiT example plugin does)."""
    slots = getattr(block, "slots", None)
    if slots is None and taps is None:
        return block(x)
    slots = slots or EMPTY_SLOTS

    def attention(x: torch.Tensor) -> torch.Tensor:
        normed = block.norm1(x)
        prefix = prefix_tokens(slots, x, block.norm1)
        if prefix is None:
            return block.ls1(block.attn(normed))
        joined = torch.cat([normed, prefix.expand(x.shape[0], -1, -1)], dim=1)
        return block.ls1(block.attn(joined)[:, : x.shape[1]])

    return run_slotted(
        x,
        slots,
        attention=attention,
        mlp=lambda x: block.ls2(block.mlp(block.norm2(x))),
        drop_path1=block.drop_path1,
        drop_path2=block.drop_path2,
        layout=lambda: layout,
        taps=taps,
    )


class ViTBackbone(Backbone):
    """A timm VisionTransformer without its head, pooled as timm pools it (class token or mean)."""

    def __init__(self, name: str, body: VisionTransformer, pad_inputs: bool) -> None:
        super().__init__(name)
        if body.global_pool not in POOLS or body.attn_pool is not None:
            raise UserError(f"{name}: a ViT pooled by {body.global_pool!r} is not supported (only {POOLS})")
        self.patch_embed = body.patch_embed
        self.cls_token = body.cls_token
        self.reg_token = body.reg_token
        self.pos_embed = body.pos_embed
        self.pos_drop = body.pos_drop
        self.patch_drop = body.patch_drop
        self.norm_pre = body.norm_pre
        self.blocks = body.blocks
        self.norm = body.norm
        self.fc_norm = body.fc_norm
        self.global_pool: str = body.global_pool
        self.num_prefix_tokens: int = body.num_prefix_tokens
        self.no_embed_class: bool = body.no_embed_class
        self.pad_inputs = pad_inputs  # pad images to whole patches (dense tasks); else refuse them
        self.num_features = body.embed_dim
        self.stage_dims = (body.embed_dim,)
        self.patch_size = tuple(self.patch_embed.patch_size)
        self.map_stages = (0,)
        self.level_maps = (0, 0, 0, 0)

    def transformer_blocks(self) -> list[Block]:
        return [Block(f"blocks.{i}", block, self.stage_dims[0], 0, i) for i, block in enumerate(self.blocks)]

    def embedding(self) -> Tensors:
        parts = (self.patch_embed, self.cls_token, self.reg_token, self.pos_embed, self.norm_pre)
        return [part for part in parts if part is not None]

    def outer_layers(self, stage: int | None) -> list[str]:
        if stage is not None:
            return []  # one stage, no transition
        norms = ("patch_embed.norm", "norm_pre")  # Identity in most ViTs; CLIP's pre-norm is one
        return ["patch_embed.proj", *(n for n in norms if isinstance(self.get_submodule(n), nn.LayerNorm))]

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, TokenLayout]:
        """timm's patch and position embedding (the position table resampled to another grid as
        timm's `dynamic_img_size` does), prefix tokens first."""
        height, width = images.shape[-2:]
        if not self.pad_inputs and (height % self.patch_size[0] or width % self.patch_size[1]):
            raise UserError(
                f"{self.name} takes images whose sides are multiples of its patch {self.patch_size[0]}, not "
                f"{height} x {width}: set backbone.img_size (or data.image_size) to a multiple of it."
            )
        x = self.patch_embed(images)  # (B, H, W, C): built with dynamic_img_size, timm's NHWC output
        grid = (x.shape[1], x.shape[2])
        pos_embed = self.pos_embed
        if grid != tuple(self.patch_embed.grid_size):
            prefix_in_table = 0 if self.no_embed_class else self.num_prefix_tokens
            pos_embed = resample_abs_pos_embed(
                pos_embed,
                new_size=grid,
                old_size=self.patch_embed.grid_size,
                num_prefix_tokens=prefix_in_table,
            )
        x = x.flatten(1, 2)
        prefix = [t.expand(x.shape[0], -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        if self.no_embed_class:
            x = torch.cat([*prefix, x + pos_embed], dim=1)
        else:
            x = torch.cat([*prefix, x], dim=1) + pos_embed
        x = self.norm_pre(self.patch_drop(self.pos_drop(x)))
        return x, TokenLayout(grid, self.num_prefix_tokens)

    def run_block(
        self, block: Block, x: torch.Tensor, layout: TokenLayout | None, taps: list[Branches] | None
    ) -> torch.Tensor:
        return run_vit_block(block.module, x, layout, taps)

    def to_map(self, tokens: torch.Tensor, layout: TokenLayout | None) -> torch.Tensor:
        assert layout is not None
        return tokens[:, layout.prefix :].unflatten(1, layout.grid).permute(0, 3, 1, 2).contiguous()

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """The class token, or the mean of the patch tokens through timm's `fc_norm`."""
        pooled = global_pool_nlc(
            features, pool_type=self.global_pool, num_prefix_tokens=self.num_prefix_tokens
        )
        return self.fc_norm(pooled)

    def pyramid(self, levels: Sequence[int]) -> Pyramid:
        return SimpleFeaturePyramid(self.stage_dims[0], self.patch_size[0], levels)


def vit_spec(name: str) -> ViTSpec:
    """The ViT size `name`; an unknown one is a user error listing the sizes."""
    if name not in VIT_SPECS:
        raise UserError(f"Unknown ViT size {name!r} (backbone.name). Known: {', '.join(VIT_SPECS)}.")
    return VIT_SPECS[name]


def build_vit(
    name: str,
    img_size: int | None = None,
    drop_path_rate: float = 0.0,
    dynamic_size: bool = False,
    hub: HubWeights | None = None,
    hub_file: Path | None = None,
    checkpoint: Path | None = None,
) -> ViTBackbone:
    """Build a ViT by its short name (`vit_b`, ..., `vit_micro`), with `hub` weights when given (from
    `hub_file`, the hub's file already in the cache, when given) or those of a `checkpoint` file
    (`load_vit_checkpoint`). `dynamic_size` pads any input to whole patches and resamples the
    position table to its grid (dense tasks)."""
    spec = vit_spec(name)
    size = img_size or spec.img_size
    body = timm.create_model(
        f"{spec.timm_name}.{spec.hub[hub.key]}" if hub else spec.timm_name,
        pretrained=hub is not None,
        num_classes=0,
        img_size=size,
        drop_path_rate=drop_path_rate,
        dynamic_img_size=True,  # timm's NHWC patch output: the grid stays known
        dynamic_img_pad=dynamic_size,
        pretrained_cfg_overlay={"file": str(hub_file)} if hub_file else None,
        **spec.overrides,
    )
    patch = body.patch_embed.patch_size[0]
    if not dynamic_size and size % patch:
        raise UserError(
            f"{name} cuts images into {patch} x {patch} patches: backbone.img_size={size} is not a multiple "
            f"of {patch}. Choose one that is (e.g. {size - size % patch or patch})."
        )
    if checkpoint is not None:
        log.info("backbone %s: %s", name, load_vit_checkpoint(body, checkpoint, name))
    return ViTBackbone(name, body, pad_inputs=dynamic_size)


def load_vit_checkpoint(body: VisionTransformer, path: Path, name: str) -> str:
    """Load a ViT checkpoint file into a timm model: Google's `.npz` (the original ViT and AugReg
    releases, e.g. the `ViT-B_16.npz` that VTAB-1k code ships) through timm's own loader, or a state
    dict in timm's names (or one that timm's `checkpoint_filter_fn` converts: OpenAI CLIP, DINOv2).
    A state dict's keys and shapes are checked first, so a file of another size fails with the
    difference named. Returns what was loaded, in words."""
    if path.suffix == ".npz":
        try:
            body.load_pretrained(str(path))
        except Exception as e:  # a malformed or foreign npz: the file is the problem
            reason = f"{type(e).__name__}: {first_line(e)}"
            raise UserError(f"cannot load {path} as a ViT .npz checkpoint for {name} ({reason})") from e
        return f"npz checkpoint {path}"
    state_dict = read_state_dict(path)
    if any(k.startswith("backbone.") for k in state_dict):  # a task model's
        state_dict = {
            k.removeprefix("backbone."): v for k, v in state_dict.items() if k.startswith("backbone.")
        }
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith("head.")}
    state_dict = checkpoint_filter_fn(state_dict, body)  # other layouts to timm's, tables resampled
    expected = body.state_dict()
    problems = key_problems(state_dict, expected, str) or shape_problems(state_dict, expected, str)
    if problems:
        raise UserError(
            f"the checkpoint {path} does not fit the backbone {name}: {'; '.join(problems)}. Is it a "
            "checkpoint of another ViT size? If so, set backbone.name to match."
        )
    body.load_state_dict(state_dict)
    return f"timm-format checkpoint {path}"


def build(cfg: BackboneConfig, dynamic_size: bool, pretrained: bool) -> ViTBackbone:
    """The registered builder of every ViT size: `cfg.name` built, `cfg.weights` loaded."""
    if cfg.window_size is not None:
        raise UserError(
            f"backbone.window_size={cfg.window_size} is a Swin option: {cfg.name} attends globally and has "
            "no windows. Leave backbone.window_size unset (null)."
        )
    options = {"img_size": cfg.img_size, "drop_path_rate": cfg.drop_path_rate, "dynamic_size": dynamic_size}
    if not pretrained:
        return build_vit(cfg.name, **options)
    source = resolve_weights(backbone_entry(cfg.name), cfg.weights)
    if isinstance(source, HubWeights):
        backbone = from_hub(
            source,
            lambda file: build_vit(cfg.name, hub=source, hub_file=file, **options),
            "backbone.weights=/path/to/ViT-B_16.npz (Google's release), or a timm .pth / .safetensors file",
        )
        log.info("backbone %s: weights %s from the Hugging Face hub", cfg.name, source.model)
        return backbone
    checkpoint = source if isinstance(source, Path) else None
    backbone = build_vit(cfg.name, checkpoint=checkpoint, **options)  # logs what a checkpoint loaded
    if checkpoint is None:
        log.info("backbone %s: random init", cfg.name)
    return backbone
