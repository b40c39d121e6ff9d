"""One Swin backbone for every method and task, built from timm's own modules.

`SwinBackbone` re-registers timm's `patch_embed`, `layers` and `norm` under their timm names,
so its state dict *is* a timm state dict (minus the classifier), and drives the stages itself.
Driving the loop here buys three things without copying timm's Swin code:

* adapter *slots* on each block (`BlockSlots`), the single place where methods insert modules,
  token-level ones (prefix tokens inside window attention) included;
* window attention on maps of any size as the Swin detection and segmentation code computes it
  (`windowed_attention`: pad to whole windows, *then* shift);
* a no-grad prefix: everything before the first trainable tensor runs under `torch.no_grad()`,
  so a frozen backbone builds no autograd graph it does not need;
* per-stage feature maps for dense heads.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.models.swin_transformer import (
    SwinTransformerBlock,
    WindowAttention,
    window_partition,
    window_reverse,
)
from torch import nn

from peft_bench.errors import UserError


@dataclass(frozen=True)
class SwinSpec:
    """Architecture of one Swin size, as timm names and builds it."""

    timm_name: str
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    img_size: int = 224
    window_size: int = 7
    hub_tag: str | None = "ms_in22k"  # timm pretrained tag of the paper's ImageNet-22k weights

    @property
    def stage_dims(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2**i for i in range(len(self.depths)))


def _cpu_swin(embed_dim: int) -> SwinSpec:
    """A Swin for the CPU: 4 stages of 2 blocks (so shifted windows and Partial-1's "last block"
    exist), 64 px images, window 4, no hub weights."""
    return SwinSpec(
        "swin_tiny_patch4_window7_224",
        embed_dim,
        (2, 2, 2, 2),
        (1, 2, 4, 8),
        img_size=64,
        window_size=4,
        hub_tag=None,
    )


SWIN_SPECS: dict[str, SwinSpec] = {
    "swin_t": SwinSpec("swin_tiny_patch4_window7_224", 96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "swin_s": SwinSpec("swin_small_patch4_window7_224", 96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "swin_b": SwinSpec("swin_base_patch4_window7_224", 128, (2, 2, 18, 2), (4, 8, 16, 32)),
    "swin_l": SwinSpec("swin_large_patch4_window7_224", 192, (2, 2, 18, 2), (6, 12, 24, 48)),
    # Small Swins that train on a 2-core CPU in minutes (0.57M and 2.3M parameters), pretrained
    # offline rather than on the hub.
    "swin_nano": _cpu_swin(16),
    "swin_micro": _cpu_swin(32),
}


def swin_spec(name: str) -> SwinSpec:
    """The architecture of `backbone.name`; an unknown name is a user error that lists the sizes."""
    if name not in SWIN_SPECS:
        raise UserError(
            f"Unknown backbone {name!r} (backbone.name). Known: {', '.join(SWIN_SPECS)}. Choose one with "
            "backbone=<name>."
        )
    return SWIN_SPECS[name]


class BlockSlots(nn.Module):
    """The places where a method may insert a module into one Swin block.

    With tokens `x` of shape (B, H, W, C), the block computes::

        a = attn_out(attn(norm1(x), prefix=norm1(attn_prefix(x))))
        x = post_attn(x + drop_path1(a))             # post_attn: on the main stream, post-residual
        y = x + drop_path2(mlp_out(mlp(norm2(x)))) + mlp_parallel(x)
        y = post_mlp(y)

    A side network (`SideNetwork`) reads `a` and the MLP branch (after `mlp_out`), both before drop
    path and detached, and changes nothing in the block. Unset slots cost nothing. Every slot module
    but `attn_prefix` maps (B, H, W, C) to (B, H, W, C).
    `attn_prefix` is token-level: from the block's input it gives P tokens, (P, C) or (B, P, C), in
    the space of that input (so normed by `norm1` as the map is); every window's queries then also
    attend to them as extra keys and values (no position bias, never masked by the shift), and
    their own outputs are dropped: the place of prompt tokens (VPT-deep). With
    `attn_prefix_normed`, the tokens are taken as already in `norm1`'s output space and enter the
    attention as they are (`prefix=attn_prefix(x)`): prompts joined to the windows after `norm1`,
    as the Mona authors' Swin VPT does.
    """

    def __init__(self) -> None:
        super().__init__()
        self.attn_out: nn.Module | None = None
        self.post_attn: nn.Module | None = None
        self.mlp_out: nn.Module | None = None
        self.mlp_parallel: nn.Module | None = None
        self.post_mlp: nn.Module | None = None
        self.attn_prefix: nn.Module | None = None
        self.attn_prefix_normed = False  # True: `attn_prefix` skips norm1


EMPTY_SLOTS = BlockSlots()  # a block without a method's modules


def slots_of(block: SwinTransformerBlock) -> BlockSlots:
    """The block's slots, created on first use (registered as the child `slots`)."""
    if not hasattr(block, "slots"):
        block.slots = BlockSlots()
    return block.slots


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
    slots: BlockSlots | None = getattr(block, "slots", None)
    if slots is None and taps is None and not any(_window_padding(block, x)):
        return block(x)
    slots = slots or EMPTY_SLOTS
    if slots.attn_prefix is not None:
        prefix = slots.attn_prefix(x)
        if not slots.attn_prefix_normed:
            prefix = block.norm1(prefix)
        attn = prefixed_windowed_attention(block, block.norm1(x), prefix)
    else:
        attn = windowed_attention(block, block.norm1(x))
    if slots.attn_out is not None:
        attn = slots.attn_out(attn)
    x = x + block.drop_path1(attn)
    if slots.post_attn is not None:
        x = slots.post_attn(x)
    mlp = block.mlp(block.norm2(x))
    if slots.mlp_out is not None:
        mlp = slots.mlp_out(mlp)
    if taps is not None:
        taps.append((attn.detach(), mlp.detach()))
    y = x + block.drop_path2(mlp)
    if slots.mlp_parallel is not None:
        y = y + slots.mlp_parallel(x)
    if slots.post_mlp is not None:
        y = slots.post_mlp(y)
    return y


def _has_trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


Branches = tuple[torch.Tensor, torch.Tensor]  # one block's attention and MLP branch outputs, (B, H, W, C)


class SideNetwork(nn.Module, ABC):
    """A trainable network beside the frozen blocks (`SwinBackbone.side`): it reads them and adds to
    their stage outputs, so that backpropagation never enters a block (E3VA's highway)."""

    @abstractmethod
    def forward(
        self, backbone: SwinBackbone, branches: list[list[Branches]], stages: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """One (B, H, W, C) term per stage, added to that stage's output.

        `branches[s]` holds the (attention, MLP) branch outputs of stage `s`'s blocks in order, and
        `stages[s]` its output, all detached; `backbone` lends its own (frozen) modules, e.g. the
        patch mergings `backbone.layers[s].downsample`.
        """


class SwinBackbone(nn.Module):
    """A timm Swin Transformer without its classifier, with method slots and stage outputs.

    `side`, when set, is a `SideNetwork`: `forward_stages` first runs the backbone as without it
    (frozen units without autograd), keeping each block's attention and MLP branch outputs,
    (B, H, W, C) before drop path, detached; then `side(self, branches, stages)` gives one term per
    stage, added to that stage's output, i.e. to what the output norm and the head read, never to
    what the next stage reads. The gradient thus reaches the side (and the frozen modules it
    borrows) but no block. Unset (None), it costs nothing.
    """

    def __init__(self, name: str, spec: SwinSpec, body: nn.Module) -> None:
        super().__init__()
        self.name = name
        self.spec = spec
        self.patch_embed = body.patch_embed
        self.layers = body.layers
        self.norm = body.norm
        self.num_features: int = body.num_features
        self.stage_dims = spec.stage_dims
        self.output_norms: nn.ModuleList | None = None
        self.side: SideNetwork | None = None

    def prepare_output_norms(self, per_stage: bool, fresh: bool) -> None:
        """The norms that feed the head: one per stage (`use_output_norms`, dense tasks) or the final
        one; `fresh` starts them at weight 1, bias 0, as in the reference runs. Call before a
        method is applied."""
        if per_stage:
            self.use_output_norms(fresh)
        elif fresh:
            self.norm.reset_parameters()

    def use_output_norms(self, fresh: bool = False) -> None:
        """Switch to the dense-task layout: one LayerNorm per stage output (`output_norms.0-3`,
        the reference backbones' norm0..norm3) in place of the final norm, whose pretrained
        weights the last one takes, unless `fresh`: then all four start at weight 1, bias 0, as in
        the reference runs (their checkpoint's `norm` has no `norm3` to load into). Call before a
        method is applied."""
        norms = nn.ModuleList(nn.LayerNorm(dim, device=self.norm.weight.device) for dim in self.stage_dims)
        if not fresh:
            norms[-1].load_state_dict(self.norm.state_dict())
        self.output_norms = norms
        del self.norm

    def freeze_stages(self, frozen_stages: int) -> None:
        """Freeze as `frozen_stages` of the Swin detection code the paper builds on (Microsoft's
        Swin-Transformer-Object-Detection), after a method was applied: >= 0 (and 1) freezes the
        patch embedding; N >= 2 also stages 0..N-2, each with the patch merging that ends it in
        that layout (the one that starts the next stage in timm's)."""
        frozen: list[nn.Module] = [self.patch_embed] if frozen_stages >= 0 else []
        for s in range(max(0, frozen_stages - 1)):
            frozen.append(self.layers[s].blocks)
            if s + 1 < len(self.layers):
                frozen.append(self.layers[s + 1].downsample)
        for module in frozen:
            module.requires_grad_(False)

    def blocks(self) -> Iterator[tuple[str, SwinTransformerBlock]]:
        """All transformer blocks with their timm names (`layers.S.blocks.B`), in order."""
        for s, stage in enumerate(self.layers):
            for b, block in enumerate(stage.blocks):
                yield f"layers.{s}.blocks.{b}", block

    def _units(self) -> list[tuple[int | None, nn.Module]]:
        """The forward pass as an ordered list of (stage index or None, module) units."""
        units: list[tuple[int | None, nn.Module]] = [(None, self.patch_embed)]
        for s, stage in enumerate(self.layers):
            units.append((s, stage.downsample))
            units.extend((s, block) for block in stage.blocks)
        return units

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of each stage, (B, H, W, C), before any output norm, plus the terms of the
        `side` network if one is set.

        Units before the first one that holds a trainable tensor run without autograd.
        """
        units = self._units()
        first_trainable = next((i for i, (_, m) in enumerate(units) if _has_trainable(m)), len(units))
        branches: list[list[Branches]] | None = None if self.side is None else [[] for _ in self.layers]
        outputs: list[torch.Tensor] = []
        for i, (stage, unit) in enumerate(units):
            with torch.set_grad_enabled(torch.is_grad_enabled() and i >= first_trainable):
                if isinstance(unit, SwinTransformerBlock):
                    x = run_block(unit, x, None if branches is None else branches[stage])
                else:
                    x = unit(x)
            is_stage_end = stage is not None and (i + 1 == len(units) or units[i + 1][0] != stage)
            if is_stage_end:
                outputs.append(x)
        if self.side is None:
            return outputs
        terms = self.side(self, branches, [s.detach() for s in outputs])
        return [s + t for s, t in zip(outputs, terms, strict=True)]

    def forward_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Normed stage outputs as (B, C, H, W) maps, strides 4, 8, 16, 32: the input of a neck."""
        assert self.output_norms is not None, "call use_output_norms() first"
        return [
            norm(s).permute(0, 3, 1, 2).contiguous()
            for norm, s in zip(self.output_norms, self.forward_stages(x), strict=True)
        ]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Final-normed tokens of the last stage, (B, H, W, C)."""
        last = self.forward_stages(x)[-1]
        with torch.set_grad_enabled(
            torch.is_grad_enabled() and (last.requires_grad or _has_trainable(self.norm))
        ):
            return self.norm(last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled features, (B, num_features): the classification view."""
        return self.forward_features(x).mean(dim=(1, 2))


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
    in the cache); other weight sources are loaded afterwards by `peft_bench.backbones.weights`.
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
