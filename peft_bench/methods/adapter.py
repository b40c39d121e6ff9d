"""Houlsby adapters: a bottleneck with an inner skip after the attention and MLP branches."""

from __future__ import annotations

from peft_bench.backbones.base import Block
from peft_bench.config import MethodInit
from peft_bench.layers.bottleneck import REFERENCE_INIT_STD, Bottleneck, Residual, trunc_normal_linears
from peft_bench.methods.base import BlockInsertion
from peft_bench.methods.configs import AdapterConfig


class Adapter(BlockInsertion):
    """Houlsby adapters `x + up(drop(gelu(down(x))))` on the attention and MLP branch outputs.

    Placed before each residual add (slots `attn_out`, `mlp_out`). Init `reference` as the Mona
    authors' backbones (trunc-normal std 0.02, zero biases); `original` as Houlsby et al.'s code
    (init_scale 1e-3: std 1e-3), so that each adapter starts nearer the identity. Per block:
    2(2mn + m + n).
    """

    config_class = AdapterConfig
    cfg: AdapterConfig

    def insert(self, block: Block) -> None:
        slots = block.slots
        slots.attn_out = self._adapter(block.dim)
        slots.mlp_out = self._adapter(block.dim)

    def _adapter(self, dim: int) -> Residual:
        bottleneck = Bottleneck.linear(dim, self.cfg.dim, self.cfg.dropout)
        original = MethodInit(self.cfg.init) is MethodInit.original
        trunc_normal_linears(bottleneck, std=1e-3 if original else REFERENCE_INIT_STD)
        return Residual(bottleneck)
