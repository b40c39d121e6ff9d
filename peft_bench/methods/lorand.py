"""LoRand: Houlsby-placed adapters whose projections are sums of small kernel products."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformerBlock
from torch import nn

from peft_bench.backbones.swin import slots_of
from peft_bench.config import MethodConfig
from peft_bench.methods.base import BlockInsertion, register_method
from peft_bench.methods.layers import Bottleneck, Residual


@dataclass
class LoRandConfig(MethodConfig):
    dim: int = 64  # bottleneck width n (the paper's baselines use 64; the LoRand paper m/2)
    branches: int = 2  # alpha: the number of P K Q branches of each projection
    kernel: int = 8  # beta: the side of each branch's kernel K


def _kaiming_per_branch(stack: torch.Tensor) -> None:
    """Kaiming-uniform(a=sqrt(5)) on each branch's matrix, with that matrix's own fan-in."""
    for matrix in stack:
        nn.init.kaiming_uniform_(matrix, a=math.sqrt(5))


class LoRandLinear(nn.Module):
    """A linear map with weight `sum_i P_i K_i Q_i`: (out, beta) @ (beta, beta) @ (beta, in).

    The kernels K (branches, beta, beta) are passed in so that an adapter's down and up
    projections can share them; P, Q and the bias are this projection's own.
    """

    def __init__(self, in_features: int, out_features: int, kernel: nn.Parameter) -> None:
        super().__init__()
        branches, beta, _ = kernel.shape
        self.kernel = kernel
        self.p = nn.Parameter(torch.empty(branches, out_features, beta))
        self.q = nn.Parameter(torch.empty(branches, beta, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        _kaiming_per_branch(self.p)
        _kaiming_per_branch(self.q)
        bound = 1 / math.sqrt(in_features)
        nn.init.uniform_(self.bias, -bound, bound)

    def composed_weight(self) -> torch.Tensor:
        """The (out, in) weight, composed from the factors on every call (so they all train)."""
        return (self.p @ self.kernel @ self.q).sum(dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.composed_weight(), self.bias)


def lorand_adapter(dim: int, hidden: int, branches: int, beta: int) -> Residual:
    """`x + up(gelu(down(x)))` with LoRand projections that share their kernels K_i.

    Per adapter: 2 * branches * beta * (m + n) + branches * beta^2 + m + n.
    """
    kernel = nn.Parameter(torch.empty(branches, beta, beta))
    _kaiming_per_branch(kernel)
    return Residual(Bottleneck(LoRandLinear(dim, hidden, kernel), LoRandLinear(hidden, dim, kernel)))


@register_method("lorand", label="LoRand")
class LoRand(BlockInsertion):
    """LoRand adapters on the attention and MLP branch outputs, before each residual add.

    Init as the LoRand code: every factor P, K, Q kaiming-uniform(a=sqrt(5)) per branch, biases
    as nn.Linear's. Not zero-initialised (the LoRand paper does not start from the identity), so
    the model is near, not equal to, the base model at init. No dropout, as LoRand has none.
    The shared kernel is one Parameter registered under both projections: `parameters()`
    counts it once, while `state_dict()` lists it under both names.
    """

    config_class = LoRandConfig
    cfg: LoRandConfig

    def insert(self, block: SwinTransformerBlock) -> None:
        slots = slots_of(block)
        slots.attn_out = self._adapter(block.dim)
        slots.mlp_out = self._adapter(block.dim)

    def _adapter(self, dim: int) -> Residual:
        return lorand_adapter(dim, self.cfg.dim, self.cfg.branches, self.cfg.kernel)
