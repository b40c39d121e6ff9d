"""Methods without extra structure: they choose which backbone tensors train."""

from __future__ import annotations

from torch import nn

from peft_bench.backbones.base import Backbone
from peft_bench.methods.base import Method, freeze


class Full(Method):
    """Every backbone tensor trains."""

    def apply(self, backbone: Backbone) -> None:
        for p in backbone.parameters():
            p.requires_grad_(True)


class Fixed(Method):
    """The backbone is frozen; only the neck and head train."""

    def apply(self, backbone: Backbone) -> None:
        freeze(backbone)


class BitFit(Method):
    """Every tensor whose name contains `bias`, as the reference code selects them.

    That takes the qkv/proj/fc1/fc2 and LayerNorm biases, the patch-embed bias and any
    relative-position bias tables (which the name match includes).
    """

    def apply(self, backbone: Backbone) -> None:
        for name, p in backbone.named_parameters():
            p.requires_grad_("bias" in name)


class NormTuning(Method):
    """Every LayerNorm's weight and bias: in blocks, the embedding, between stages and at the output."""

    def apply(self, backbone: Backbone) -> None:
        freeze(backbone)
        for module in backbone.modules():
            if isinstance(module, nn.LayerNorm):
                for p in module.parameters():
                    p.requires_grad_(True)


class Partial1(Method):
    """Only the last block of the last stage trains."""

    def apply(self, backbone: Backbone) -> None:
        freeze(backbone)
        backbone.transformer_blocks()[-1].module.requires_grad_(True)
