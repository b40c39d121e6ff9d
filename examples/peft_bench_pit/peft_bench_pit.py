"""PiT as a peft_bench plugin: a backbone family outside the package, registered by installing it.

timm's Pooling-based Vision Transformer (Heo et al., 2021) is a hierarchical ViT: three stages of
timm ViT blocks on (B, 1 + H * W, C) tokens, the class token first, and before stages 1 and 2 a
`Pooling` (a stride-2 depthwise conv on the grid, a linear layer on the class token) that halves the
grid and widens the tokens. The modules keep their timm names, so the state dict is timm's minus
the head; the class token crosses the poolings in `enter_stage`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.models.pit import PoolingVisionTransformer, checkpoint_filter_fn
from torch import nn

from peft_bench.backbones.base import Backbone, Block, Pyramid, backbone_entry, register_backbone
from peft_bench.backbones.vit import run_vit_block
from peft_bench.backbones.weights import (
    HubWeights,
    from_hub,
    key_problems,
    read_state_dict,
    resolve_weights,
    shape_problems,
)
from peft_bench.config import BackboneConfig
from peft_bench.errors import UserError
from peft_bench.layers.slots import Branches, TokenLayout

# timm's pit_ti_224 shrunk for a CPU: 64 px in 8 x 8 patches, grids 8, 4, 2 (PiT's strides 8, 16, 32),
# widths 32, 64, 128, two blocks per stage.
MICRO = dict(img_size=64, patch_size=8, stride=8, base_dims=(16, 16, 16), depth=(2, 2, 2), heads=(2, 4, 8))


class PiTLevels(Pyramid):
    """Levels 1-3 (strides 8-32) are the stage maps; level 0 (stride 4) is stage 0's map upsampled
    by a 2x2 transposed conv, a neck layer that trains with the head."""

    def __init__(self, levels: Sequence[int], stage_dims: Sequence[int]) -> None:
        super().__init__()
        self.levels = tuple(levels)
        self.channels = tuple(stage_dims[max(level - 1, 0)] for level in self.levels)
        self.up = nn.ConvTranspose2d(stage_dims[0], stage_dims[0], 2, stride=2) if 0 in self.levels else None

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.up(maps[0]) if level == 0 else maps[level - 1] for level in self.levels]


class PiTBackbone(Backbone):
    """A timm PiT without its head: tokens (B, 1 + H * W, C), pooled by the class token."""

    def __init__(self, name: str, body: PoolingVisionTransformer, pad_inputs: bool) -> None:
        super().__init__(name)
        if body.num_tokens != 1:
            raise UserError(f"{name}: a distilled PiT (two class tokens) is not supported")
        for part in ("patch_embed", "pos_embed", "cls_token", "pos_drop", "transformers", "norm"):
            setattr(self, part, getattr(body, part))  # timm's own modules and tensors, timm's names
        self.pad_inputs = pad_inputs  # pad images to whole patches (dense tasks); else refuse them
        self.stage_dims = tuple(d * h for d, h in zip(body.base_dims, body.heads, strict=True))
        self.num_features = body.num_features
        self.patch_size, self.stride = body.patch_embed.patch_size, body.patch_embed.conv.stride[0]
        self.map_stages, self.level_maps = (0, 1, 2), (0, 0, 1, 2)

    def transformer_blocks(self) -> list[Block]:
        named = [(s, b, block) for s, t in enumerate(self.transformers) for b, block in enumerate(t.blocks)]
        return [
            Block(f"transformers.{s}.blocks.{b}", block, self.stage_dims[s], s, index)
            for index, (s, b, block) in enumerate(named)
        ]

    def embedding(self) -> list[nn.Module | nn.Parameter]:
        return [self.patch_embed, self.pos_embed, self.cls_token]

    def outer_layers(self, stage: int | None) -> list[str]:
        return ["patch_embed.conv"] if stage is None else []  # the poolings have no norm

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, TokenLayout]:
        """timm's `forward_features` up to the first stage; the (1, C, H, W) position map resampled
        (bicubic, as timm's `resample_abs_pos_embed`) when the grid is not the built one."""
        pad = [-(side - self.patch_size[0]) % self.stride for side in images.shape[-2:]]
        if any(pad) and not self.pad_inputs:
            raise UserError(f"{self.name}: images of {tuple(images.shape[-2:])} px leave a partial patch")
        x = self.patch_embed(F.pad(images, (0, pad[1], 0, pad[0])) if any(pad) else images)
        pos_embed = self.pos_embed
        if x.shape[-2:] != pos_embed.shape[-2:]:
            pos_embed = F.interpolate(pos_embed, size=x.shape[-2:], mode="bicubic", antialias=True)
        x = self.pos_drop(x + pos_embed)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
        return self.transformers[0].norm(tokens), TokenLayout(tuple(x.shape[-2:]), prefix=1)

    def transition(self, stage: int) -> nn.Module | None:
        return self.transformers[stage].pool  # None before stage 0

    def enter_stage(
        self, stage: int, x: torch.Tensor, layout: TokenLayout | None
    ) -> tuple[torch.Tensor, TokenLayout | None]:
        """As timm's `Transformer.forward`: the grid pooled by the depthwise conv, the class token
        by the linear layer, joined again (class token first) on the new, halved grid."""
        grid, cls_token = self.transformers[stage].pool(self._grid(x, layout), x[:, : layout.prefix])
        tokens = torch.cat([cls_token, grid.flatten(2).transpose(1, 2)], dim=1)
        return self.transformers[stage].norm(tokens), TokenLayout(tuple(grid.shape[-2:]), layout.prefix)

    @staticmethod
    def _grid(x: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        """The patch tokens as a (B, C, H, W) map, the view timm makes (a bit-for-bit equal pooling)."""
        return x[:, layout.prefix :].transpose(1, 2).reshape(x.shape[0], x.shape[2], *layout.grid)

    def run_block(
        self, block: Block, x: torch.Tensor, layout: TokenLayout | None, taps: list[Branches] | None
    ) -> torch.Tensor:
        return run_vit_block(block.module, x, layout, taps)  # timm's ViT blocks, with their slots

    def to_map(self, tokens: torch.Tensor, layout: TokenLayout | None) -> torch.Tensor:
        return self._grid(tokens, layout).contiguous()

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """The class token. timm norms only it (`norm(cls_tokens)`); the contract norms every token of
        the last stage first: the same numbers, as a LayerNorm works on each token alone."""
        return features[:, 0]

    def pyramid(self, levels: Sequence[int]) -> Pyramid:
        return PiTLevels(levels, self.stage_dims)


SIZES = {"pit_micro": ("pit_ti_224", MICRO), "pit_ti": ("pit_ti_224", {})}  # timm name, overrides


def build(cfg: BackboneConfig, dynamic_size: bool, pretrained: bool) -> PiTBackbone:
    """The registered builder: timm's model at its native size (the position map is resampled per
    input, so hub weights load at any `backbone.img_size`), `backbone.weights` loaded."""
    if cfg.window_size is not None:
        raise UserError(
            f"backbone.window_size={cfg.window_size} is a Swin option: {cfg.name} attends globally and has "
            "no windows. Leave backbone.window_size unset (null)."
        )
    timm_name, overrides = SIZES[cfg.name]
    options = {"num_classes": 0, "drop_path_rate": cfg.drop_path_rate, **overrides}
    source = resolve_weights(backbone_entry(cfg.name), cfg.weights) if pretrained else "none"
    if isinstance(source, HubWeights):
        hint = f"backbone.weights=/path/to/{timm_name}.pth (a timm state dict)"
        overlay = lambda file: {"file": str(file)} if file else None  # noqa: E731  (the cached file)
        create = lambda file: timm.create_model(  # noqa: E731
            source.model, pretrained=True, pretrained_cfg_overlay=overlay(file), **options
        )
        body = from_hub(source, create, hint)
    else:
        body = timm.create_model(timm_name, **options)
    if isinstance(source, Path):  # a timm state dict (or the original code's), its head dropped
        state = checkpoint_filter_fn(read_state_dict(source), body)
        state = {k: v for k, v in state.items() if not k.startswith(("head.", "head_dist."))}
        expected = body.state_dict()
        problems = key_problems(state, expected, str) or shape_problems(state, expected, str)
        if problems:
            raise UserError(f"the checkpoint {source} does not fit {cfg.name}: {'; '.join(problems)}.")
        body.load_state_dict(state)
    return PiTBackbone(cfg.name, body, dynamic_size)


register_backbone("pit_micro", build=build, label="PiT-micro", img_size=64)
register_backbone(
    "pit_ti",
    build=build,
    label="PiT-Ti",
    img_size=224,
    weights="in1k",
    hub={"in1k": "pit_ti_224.in1k"},
)
