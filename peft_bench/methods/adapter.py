"""Houlsby adapters, and the parts that every method inserting modules into blocks shares.

`BlockInsertion` (freeze, then add modules to every block), `Bottleneck` (down, GELU, up) and
`Residual` live here because AdaptFormer, LoRand, Mona (and, for the loop, LoRA) reuse them.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import torch
from timm.models.swin_transformer import SwinTransformerBlock
from torch import nn

from peft_bench.backbones.swin import SwinBackbone, slots_of
from peft_bench.config import MethodConfig
from peft_bench.methods.base import Method, freeze, register


class BlockInsertion(Method):
    """A method that freezes the backbone, then adds trainable modules to every block."""

    def apply(self, backbone: SwinBackbone) -> None:
        freeze(backbone)
        for _, block in backbone.blocks():
            # New modules are created where the block lives, so `apply` also works after `.to()`.
            with torch.device(next(block.parameters()).device):
                self.insert(block)

    @abstractmethod
    def insert(self, block: SwinTransformerBlock) -> None:
        """Add this method's modules to one frozen block, sized by its width `block.dim`."""


class Bottleneck(nn.Module):
    """`up(drop(gelu(mid(down(x)))))`: the projection pair that every adapter here is built on.

    `mid` is Mona's filter stage between the down projection and the activation; the other
    methods leave it out. Maps (..., m) to (..., m).
    """

    def __init__(
        self, down: nn.Module, up: nn.Module, dropout: float = 0.0, mid: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.down = down
        self.mid = mid if mid is not None else nn.Identity()
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.up = up

    @classmethod
    def linear(cls, dim: int, hidden: int, dropout: float = 0.0, mid: nn.Module | None = None) -> Bottleneck:
        """A bottleneck with plain `Linear(dim, hidden)` and `Linear(hidden, dim)` projections."""
        return cls(nn.Linear(dim, hidden), nn.Linear(hidden, dim), dropout, mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.drop(self.act(self.mid(self.down(x)))))


class Residual(nn.Module):
    """`x + body(x)`: an adapter's inner skip, so a near-zero body starts near the identity."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def trunc_normal_linears(module: nn.Module, std: float) -> None:
    """Init every Linear of `module` as Swin's `_init_weights`: trunc-normal weight, zero bias.

    The cut-off stays torch's and timm's default (+-2, absolute), as in the reference code.
    """
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std)
            nn.init.zeros_(m.bias)


@dataclass
class AdapterConfig(MethodConfig):
    dim: int = 64  # bottleneck width n
    dropout: float = 0.1


@register("adapter")
class Adapter(BlockInsertion):
    """Houlsby adapters `x + up(drop(gelu(down(x))))` on the attention and MLP branch outputs.

    Placed before each residual add (slots `attn_out`, `mlp_out`). Init as Houlsby et al.'s code
    (init_scale 1e-3): trunc-normal weights with std 1e-3 and zero biases, so each adapter
    starts near the identity. Per block: 2(2mn + m + n).
    """

    config_class = AdapterConfig
    cfg: AdapterConfig

    def insert(self, block: SwinTransformerBlock) -> None:
        slots = slots_of(block)
        slots.attn_out = self._adapter(block.dim)
        slots.mlp_out = self._adapter(block.dim)

    def _adapter(self, dim: int) -> Residual:
        bottleneck = Bottleneck.linear(dim, self.cfg.dim, self.cfg.dropout)
        trunc_normal_linears(bottleneck, std=1e-3)
        return Residual(bottleneck)
