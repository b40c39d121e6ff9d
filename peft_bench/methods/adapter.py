"""Houlsby adapters: a bottleneck with an inner skip after the attention and MLP branches."""

from __future__ import annotations

from dataclasses import dataclass

from timm.models.swin_transformer import SwinTransformerBlock

from peft_bench.backbones.swin import slots_of
from peft_bench.config import MethodConfig
from peft_bench.methods.base import BlockInsertion, register
from peft_bench.methods.layers import Bottleneck, Residual, trunc_normal_linears


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
