"""VPT-deep: fresh learnable prompt tokens in every block's window attention."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from timm.models.swin_transformer import SwinTransformerBlock
from torch import nn

from peft_bench.backbones.swin import SwinBackbone, slots_of
from peft_bench.config import MethodConfig
from peft_bench.methods.base import BlockInsertion, register_method


@dataclass
class VPTConfig(MethodConfig):
    prompts: int = 49  # prompt tokens per block P (the reference's NUM_PROMPTS, one 7x7 window)


def prompt_init_bound(patch_size: tuple[int, int], embed_dim: int) -> float:
    """VPT's uniform init bound, Xavier's for a patch-embedding conv: sqrt(6 / (3 * p_h * p_w + C)).

    `embed_dim` is the stage-0 width C: one bound for every stage, as the reference computes it once.
    """
    return math.sqrt(6.0 / (3 * math.prod(patch_size) + embed_dim))


class Prompts(nn.Module):
    """`count` prompt tokens of width `dim`, shared by every window of every image."""

    def __init__(self, count: int, dim: int, bound: float) -> None:
        super().__init__()
        self.tokens = nn.Parameter(nn.init.uniform_(torch.empty(count, dim), -bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens


@register_method("vpt", label="VPT")
class VPT(BlockInsertion):
    """VPT-deep placed as the Mona authors' Swin VPT: P prompts per block in the slot `attn_prefix`.

    Every window's queries also attend to the block's P prompts (zero position bias, never masked
    by the shift); the prompts join after `norm1` (not normed themselves) and their outputs are
    dropped, so each block starts from fresh prompts and nothing crosses patch merging. Init
    uniform(+-sqrt(6 / (3 * 4 * 4 + C))), C the stage-0 width. Per block: P * m.
    """

    config_class = VPTConfig
    cfg: VPTConfig

    def apply(self, backbone: SwinBackbone) -> None:
        self.bound = prompt_init_bound(backbone.patch_embed.patch_size, backbone.spec.embed_dim)
        super().apply(backbone)

    def insert(self, block: SwinTransformerBlock) -> None:
        slots = slots_of(block)
        slots.attn_prefix = Prompts(self.cfg.prompts, block.dim, self.bound)
        slots.attn_prefix_normed = True
