"""Block slots: the places where a method may insert a module into any transformer block.

A backbone family runs each of its blocks through `run_slotted` (the generic pre-norm block with
its slots) whenever a method has filled a slot, so every method works on every family. Nothing
here knows a family: the family supplies its attention branch, its MLP branch and the layout of
its tokens.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

Branches = tuple[torch.Tensor, torch.Tensor]  # one block's attention and MLP branch outputs


@dataclass(frozen=True)
class TokenLayout:
    """How a block's tokens lie: `prefix` tokens first (a class token, registers), then an H x W
    `grid` of patch tokens, row-major. A family without prefix tokens (Swin) has `prefix` 0 and
    hands its slots (B, H, W, C) maps; one with them (ViT) hands (B, prefix + H * W, C) tokens."""

    grid: tuple[int, int]
    prefix: int = 0


class SpatialSlot(nn.Module, ABC):
    """A slot module that needs the tokens' layout (a 2-D filter): called as `module(x, layout)`;
    every other slot module is called as `module(x)`."""

    @abstractmethod
    def forward(self, x: torch.Tensor, layout: TokenLayout | None = None) -> torch.Tensor:
        """`layout` None: `x` is a (B, H, W, C) map."""


class BlockSlots(nn.Module):
    """The places where a method may insert a module into one block.

    With tokens `x`, the block computes::

        a = attn_out(attention(norm1(x), prefix=norm1(attn_prefix(x))))
        x = post_attn(x + drop_path1(a))             # post_attn: on the main stream, post-residual
        y = x + drop_path2(mlp_out(mlp(norm2(x)))) + mlp_parallel(x)
        y = post_mlp(y)

    (`attention` and `mlp` include a layer scale where the family has one). A side network reads
    `a` and the MLP branch (after `mlp_out`), both before drop path and detached, and changes
    nothing in the block. Unset slots cost nothing. Every slot module but `attn_prefix` maps tokens
    to tokens of the same shape.
    `attn_prefix` is token-level: from the block's input it gives P tokens, (P, C) or (B, P, C), in
    the space of that input (so normed by `norm1` as the tokens are); the block's queries then also
    attend to them as extra keys and values (no position bias, never masked), and their own outputs
    are dropped: the place of prompt tokens (VPT-deep). With `attn_prefix_normed`, the tokens are
    taken as already in `norm1`'s output space and enter the attention as they are.
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


def slots_of(block: nn.Module) -> BlockSlots:
    """The block module's slots, created on first use (registered as the child `slots`)."""
    if not hasattr(block, "slots"):
        block.slots = BlockSlots()
    return block.slots


def prefix_tokens(slots: BlockSlots, x: torch.Tensor, norm: nn.Module) -> torch.Tensor | None:
    """The normed `attn_prefix` tokens of the block's input `x`, or None when the slot is empty."""
    if slots.attn_prefix is None:
        return None
    prefix = slots.attn_prefix(x)
    return prefix if slots.attn_prefix_normed else norm(prefix)


def _call(module: nn.Module, x: torch.Tensor, layout: Callable[[], TokenLayout]) -> torch.Tensor:
    return module(x, layout()) if isinstance(module, SpatialSlot) else module(x)


def run_slotted(
    x: torch.Tensor,
    slots: BlockSlots,
    *,
    attention: Callable[[torch.Tensor], torch.Tensor],
    mlp: Callable[[torch.Tensor], torch.Tensor],
    drop_path1: nn.Module,
    drop_path2: nn.Module,
    layout: Callable[[], TokenLayout],
    taps: list[Branches] | None = None,
) -> torch.Tensor:
    """One pre-norm block with its slots (`BlockSlots`): `attention(x)` is the family's attention
    branch (norm1, attention with the slots' prefix, layer scale), `mlp(x)` its MLP branch (norm2,
    MLP, layer scale), `layout()` the tokens' layout for spatial slots. With `taps`, the branch
    outputs are appended to it, detached (what a side network reads)."""
    attn = attention(x)
    if slots.attn_out is not None:
        attn = _call(slots.attn_out, attn, layout)
    x = x + drop_path1(attn)
    if slots.post_attn is not None:
        x = _call(slots.post_attn, x, layout)
    branch = mlp(x)
    if slots.mlp_out is not None:
        branch = _call(slots.mlp_out, branch, layout)
    if taps is not None:
        taps.append((attn.detach(), branch.detach()))
    y = x + drop_path2(branch)
    if slots.mlp_parallel is not None:
        y = y + _call(slots.mlp_parallel, x, layout)
    if slots.post_mlp is not None:
        y = _call(slots.post_mlp, y, layout)
    return y
