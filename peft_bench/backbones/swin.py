"""The Swin family behind the backbone contract, built from timm's own modules.

`SwinBackbone` re-registers timm's `patch_embed`, `layers` and `norm` under their timm names,
so its state dict *is* a timm state dict (minus the classifier), and runs the stages through the
contract's forward pass (`peft_bench.backbones.base.Backbone`). What is Swin's own here:

* window attention on maps of any size as the Swin detection and segmentation code computes it
  (`windowed_attention`: pad to whole windows, *then* shift), and the slots' prefix tokens inside
  every window (`prefixed_windowed_attention`);
* its sizes (`peft_bench.backbones.sizes.SWIN_SPECS`, registered as `backbone=<name>` by
  `peft_bench.backbones` with `build` as their builder), and their weights (timm's hub, the
  shipped `mini` checkpoints, and timm, Microsoft and OpenMMLab files: `swin_checkpoints`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.models.swin_transformer import (
    PatchMerging,
    SwinTransformerBlock,
    WindowAttention,
    window_partition,
    window_reverse,
)
from torch import nn

from peft_bench.backbones.base import (
    Backbone,
    Block,
    Pyramid,
    StageLevels,
    Tensors,
    backbone_entry,
)
from peft_bench.backbones.sizes import SWIN_SPECS, SwinSpec
from peft_bench.backbones.swin_checkpoints import load_checkpoint
from peft_bench.backbones.weights import HubWeights, from_hub, resolve_weights
from peft_bench.config import BackboneConfig
from peft_bench.errors import UserError
from peft_bench.layers.slots import EMPTY_SLOTS, Branches, TokenLayout, prefix_tokens, run_slotted

log = logging.getLogger(__name__)


def swin_spec(name: str) -> SwinSpec:
    """The architecture of `backbone.name`; an unknown name is a user error that lists the sizes."""
    if name not in SWIN_SPECS:
        raise UserError(
            f"Unknown backbone {name!r} (backbone.name). Known: {', '.join(SWIN_SPECS)}. Choose one with "
            "backbone=<name>."
        )
    return SWIN_SPECS[name]


def windowed_attention(block: SwinTransformerBlock, x: torch.Tensor) -> torch.Tensor:
    """The block's (shifted) window attention on normed tokens (B, H, W, C) of any size.

    The Swin detection and segmentation code (and the reference's) pads the map to whole windows
    first and then rolls it, with the shift mask computed on the padded map. timm rolls first and
    pads after, so on a map that is not a multiple of the window, rows wrapped from the top edge
    share a mask region with rows of the bottom edge and attend to them. Padding here first leaves
    timm nothing to pad: its roll and mask then run on the padded map, in the reference's order.
    """
    pad_h, pad_w = _window_padding(block, x)
    if not (pad_h or pad_w):
        return block._attn(x)
    padded = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    return block._attn(padded)[:, : x.shape[1], : x.shape[2]].contiguous()


def prefixed_windowed_attention(
    block: SwinTransformerBlock, x: torch.Tensor, prefix: torch.Tensor
) -> torch.Tensor:
    """`windowed_attention` in which every window also attends to `prefix`, (P, C) or (B, P, C)
    normed tokens: the same padding, shift, shift mask and windows as timm's `_attn`, with the
    prefix's keys and values before each window's."""
    height, width = x.shape[1:3]
    pad_h, pad_w = _window_padding(block, x)
    x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    shift = tuple(block.shift_size)
    if any(shift):
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    mask = block.get_attn_mask(x) if getattr(block, "dynamic_mask", False) else block.attn_mask
    windows = window_partition(x, block.window_size).flatten(1, 2)  # (B * nW, N, C), image-major
    shared = prefix if prefix.dim() == 3 else prefix.unsqueeze(0)  # (1, P, C): one for every image
    out = _prefixed_attention(block.attn, windows, shared, mask)
    x = window_reverse(out.view(-1, *block.window_size, x.shape[-1]), block.window_size, *x.shape[1:3])
    if any(shift):
        x = torch.roll(x, shifts=shift, dims=(1, 2))
    return x[:, :height, :width].contiguous()


def _prefixed_attention(
    attn: WindowAttention, windows: torch.Tensor, prefix: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """timm's `WindowAttention` on `windows` (B * nW, N, C) whose queries also see the keys and values
    of their image's `prefix` (B, P, C), or of one (1, P, C) shared by all, with a zero position bias
    and no shift mask toward it."""
    count, n, _ = windows.shape
    images, p, _ = prefix.shape

    def heads(tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:  # q, k, v: (tokens, heads, length, dim)
        qkv = attn.qkv(tokens)
        qkv = qkv.reshape(*tokens.shape[:2], 3, attn.num_heads, qkv.shape[-1] // (3 * attn.num_heads))
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)

    q, k, v = heads(windows)
    _, prefix_k, prefix_v = heads(prefix)  # once per prefix, shared by its windows
    k = torch.cat([prefix_k.repeat_interleave(count // images, dim=0), k], dim=2)
    v = torch.cat([prefix_v.repeat_interleave(count // images, dim=0), v], dim=2)
    bias = F.pad(attn._get_rel_pos_bias(), (p, 0))  # (1, heads, N, P + N)
    if mask is not None:  # (nW, N, N) of 0 / -100, per window of every image
        windows_per_image = mask.shape[0]
        bias = (bias.unsqueeze(1) + F.pad(mask, (p, 0)).unsqueeze(1).unsqueeze(0)).expand(
            count // windows_per_image, -1, -1, -1, -1
        )
        bias = bias.reshape(count, attn.num_heads, n, p + n)
    dropout = attn.attn_drop.p if attn.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
    return attn.proj_drop(attn.proj(out.transpose(1, 2).reshape(count, n, -1)))


def _window_padding(block: SwinTransformerBlock, x: torch.Tensor) -> tuple[int, int]:
    """The rows and columns that make the (B, H, W, C) map whole windows of the block."""
    return -x.shape[1] % block.window_size[0], -x.shape[2] % block.window_size[1]


def run_block(
    block: SwinTransformerBlock, x: torch.Tensor, taps: list[Branches] | None = None
) -> torch.Tensor:
    """timm's block forward, with `windowed_attention` and the method slots of `BlockSlots` where set.

    A block without slots on a map of whole windows runs timm's own forward (its hooks fire), unless
    `taps` is given: then the block's attention and MLP branch outputs are appended to it, detached
    (what a `SideNetwork` reads)."""
    slots = getattr(block, "slots", None)
    if slots is None and taps is None and not any(_window_padding(block, x)):
        return block(x)
    slots = slots or EMPTY_SLOTS
    grid = (x.shape[1], x.shape[2])

    def attention(x: torch.Tensor) -> torch.Tensor:
        prefix = prefix_tokens(slots, x, block.norm1)
        if prefix is None:
            return windowed_attention(block, block.norm1(x))
        return prefixed_windowed_attention(block, block.norm1(x), prefix)

    return run_slotted(
        x,
        slots,
        attention=attention,
        mlp=lambda x: block.mlp(block.norm2(x)),
        drop_path1=block.drop_path1,
        drop_path2=block.drop_path2,
        layout=lambda: TokenLayout(grid),
        taps=taps,
    )


class SwinBackbone(Backbone):
    """A timm Swin Transformer without its classifier: tokens (B, H, W, C), four stages, one map per
    stage in the dense layout (levels 0-3 are the stages)."""

    prompts_after_norm = True  # the Mona authors' Swin VPT joins its prompts after norm1
    # SSF's Swin passes PatchMerging the per-block list of tuning modes, so its `tuning_mode == 'ssf'`
    # is never true (`dongzelian/SSF` models/swin_transformer.py 397, 421, 477): no SSF there.
    ssf_after_transitions = False

    def __init__(self, name: str, spec: SwinSpec, body: nn.Module) -> None:
        super().__init__(name)
        self.spec = spec
        self.patch_embed = body.patch_embed
        self.layers = body.layers
        self.norm = body.norm
        self.num_features: int = body.num_features
        self.stage_dims = spec.stage_dims
        self.patch_size = tuple(self.patch_embed.patch_size)
        self.map_stages = tuple(range(len(spec.depths)))
        self.level_maps = self.map_stages

    def transformer_blocks(self) -> list[Block]:
        """All transformer blocks with their timm names (`layers.S.blocks.B`), in order."""
        blocks = [
            (s, b, block) for s, stage in enumerate(self.layers) for b, block in enumerate(stage.blocks)
        ]
        return [
            Block(f"layers.{s}.blocks.{b}", block, block.dim, s, index)
            for index, (s, b, block) in enumerate(blocks)
        ]

    def embedding(self) -> Tensors:
        return [self.patch_embed]

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.patch_embed(images), None

    def transition(self, stage: int) -> nn.Module:
        """timm's layout: the patch merging that starts stages 1-3 (an identity before stage 0)."""
        return self.layers[stage].downsample

    def outer_layers(self, stage: int | None) -> list[str]:
        if stage is None:
            return ["patch_embed.proj", "patch_embed.norm"]
        if isinstance(self.layers[stage].downsample, PatchMerging):  # it starts stages 1-3
            return [f"layers.{stage}.downsample.norm"]
        return []

    def run_block(
        self, block: Block, x: torch.Tensor, layout: TokenLayout | None, taps: list[Branches] | None
    ) -> torch.Tensor:
        return run_block(block.module, x, taps)

    def to_map(self, tokens: torch.Tensor, layout: TokenLayout | None) -> torch.Tensor:
        return tokens.permute(0, 3, 1, 2).contiguous()

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """Global average pooling over the last stage's map."""
        return features.mean(dim=(1, 2))

    def pyramid(self, levels: Sequence[int]) -> Pyramid:
        return StageLevels(levels, self.stage_dims)


def build_swin(
    name: str,
    img_size: int | None = None,
    window_size: int | None = None,
    drop_path_rate: float = 0.0,
    pretrained_hub: bool = False,
    dynamic_size: bool = False,
    hub_file: Path | None = None,
    always_partition: bool = False,
) -> SwinBackbone:
    """Build a Swin backbone by its short name (`swin_t`, ..., `swin_micro`).

    `pretrained_hub` loads the paper's ImageNet-22k weights through timm's hub (needs a network
    connection or a warm Hugging Face cache), from `hub_file` when given (the hub's file, already
    in the cache); a checkpoint file is loaded afterwards (`swin_checkpoints.load_checkpoint`).
    `dynamic_size` accepts any input size (dense tasks), at the cost of computing the
    shifted-window mask for each input. `always_partition` keeps every block's window and shift
    whatever the size of its map, as the Swin detection and segmentation code does; timm's default
    shrinks the window of a map no larger than it (stage 3 at 224 px) and drops its shift.
    """
    spec = swin_spec(name)
    model_name = spec.timm_name
    if pretrained_hub:
        model_name = f"{model_name}.{spec.hub_tag}"
    body = timm.create_model(
        model_name,
        pretrained=pretrained_hub,
        num_classes=0,
        embed_dim=spec.embed_dim,
        depths=spec.depths,
        num_heads=spec.num_heads,
        img_size=img_size or spec.img_size,
        window_size=window_size or spec.window_size,
        drop_path_rate=drop_path_rate,
        strict_img_size=not dynamic_size,
        always_partition=always_partition,
        pretrained_cfg_overlay={"file": str(hub_file)} if hub_file else None,
    )
    return SwinBackbone(name, spec, body)


def build(cfg: BackboneConfig, dynamic_size: bool, pretrained: bool) -> SwinBackbone:
    """The registered builder of every Swin size: `cfg.name` built, `cfg.weights` loaded.

    The weights value is checked first, so a typo fails before a model is built or a download starts.
    """
    options = {
        "img_size": cfg.img_size,
        "window_size": cfg.window_size,
        "drop_path_rate": cfg.drop_path_rate,
        "dynamic_size": dynamic_size,
        "always_partition": cfg.always_partition,
    }
    if not pretrained:
        return build_swin(cfg.name, **options)
    source = resolve_weights(backbone_entry(cfg.name), cfg.weights)
    if isinstance(source, HubWeights):
        spec = swin_spec(cfg.name)
        backbone = from_hub(
            source,
            lambda file: build_swin(cfg.name, pretrained_hub=True, hub_file=file, **options),
            f"backbone.weights=/path/to/{spec.timm_name}_22k.pth (Microsoft's release; timm and OpenMMLab "
            "files load too)",
        )
        loaded = f"weights {source.model} from the Hugging Face hub"
    else:
        backbone = build_swin(cfg.name, **options)
        loaded = load_checkpoint(backbone, source, KNOWN_SIZES) if isinstance(source, Path) else "random init"
    log.info("backbone %s: %s", cfg.name, loaded)
    return backbone


KNOWN_SIZES = {name: (spec.embed_dim, spec.depths) for name, spec in SWIN_SPECS.items()}
