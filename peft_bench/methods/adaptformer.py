"""AdaptFormer: a scaled bottleneck parallel to each block's MLP."""

from __future__ import annotations

import torch
from torch import nn

from peft_bench.backbones.base import Block
from peft_bench.config import MethodInit
from peft_bench.layers.bottleneck import Bottleneck, trunc_normal_linears
from peft_bench.methods.base import BlockInsertion
from peft_bench.methods.configs import AdaptFormerConfig


class Scaled(nn.Module):
    """`scale * body(x)` with a fixed, untrained scale."""

    def __init__(self, body: nn.Module, scale: float) -> None:
        super().__init__()
        self.body = body
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.body(x)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


class AdaptFormer(BlockInsertion):
    """`x = x + drop_path(mlp(norm2(x))) + scale * up(drop(gelu(down(x))))`, no inner residual.

    The branch reads the post-attention stream before norm2 (slot `mlp_parallel`). GELU as
    docs/methods.md says (AdaptFormer's own code uses ReLU). Init `reference` as the Mona authors'
    backbones: trunc-normal std 0.02, zero biases. `original` as AdaptFormer's code: down keeps
    Linear's kaiming-uniform(a=sqrt(5)) weight, its bias and the whole up projection are zero,
    so the model equals the base model at init. Per block: 2mn + m + n.
    """

    config_class = AdaptFormerConfig
    cfg: AdaptFormerConfig

    def insert(self, block: Block) -> None:
        branch = Bottleneck.linear(block.dim, self.cfg.dim, self.cfg.dropout)
        if MethodInit(self.cfg.init) is MethodInit.original:
            nn.init.zeros_(branch.down.bias)
            nn.init.zeros_(branch.up.weight)
            nn.init.zeros_(branch.up.bias)
        else:
            trunc_normal_linears(branch)
        block.slots.mlp_parallel = Scaled(branch, self.cfg.scale)
