"""VPT-deep: fresh learnable prompt tokens in every block's window attention."""

from __future__ import annotations

import math

import torch
from torch import nn

from peft_bench.backbones.base import Backbone, Block
from peft_bench.methods.base import BlockInsertion
from peft_bench.methods.configs import VPTConfig


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


class VPT(BlockInsertion):
    """VPT-deep: P prompts per block in the slot `attn_prefix`.

    The block's queries also attend to its P prompts (in windowed attention: every window's, with a
    zero position bias, never masked by the shift); their outputs are dropped, so each block starts
    from fresh prompts and nothing crosses a transition between stages. They join after `norm1`
    (unnormed, as the Mona authors' code places them) or normed with the tokens (as VPT's code),
    `after_norm`. Init uniform(+-sqrt(6 / (3 * p * p + C))), p the patch and C the stage-0 width.
    Per block: P * m.
    """

    config_class = VPTConfig
    cfg: VPTConfig

    def apply(self, backbone: Backbone) -> None:
        self.bound = prompt_init_bound(backbone.patch_size, backbone.stage_dims[0])
        after_norm = self.cfg.after_norm
        self.after_norm = backbone.prompts_after_norm if after_norm is None else after_norm
        super().apply(backbone)

    def insert(self, block: Block) -> None:
        slots = block.slots
        slots.attn_prefix = Prompts(self.cfg.prompts, block.dim, self.bound)
        slots.attn_prefix_normed = self.after_norm
