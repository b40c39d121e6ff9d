"""LoRand: Houlsby-placed adapters whose projections are sums of low-rank branches `A_i g_i B_i`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from peft_bench.backbones.base import Block
from peft_bench.layers.bottleneck import Bottleneck, Residual
from peft_bench.methods.base import BlockInsertion
from peft_bench.methods.configs import LoRandConfig


def _kaiming_per_branch(stack: torch.Tensor) -> None:
    """Kaiming-uniform(a=sqrt(5)) on each branch's matrix, with that matrix's own fan-in."""
    for matrix in stack:
        nn.init.kaiming_uniform_(matrix, a=math.sqrt(5))


class LoRandLinear(nn.Module):
    """A linear map `y = x W + bias` with `W = sum_i A_i g_i B_i`, an (in, out) matrix of rank <= a*b.

    Per branch i: A_i (in, b), g_i (b, b), B_i (b, out), stacked over the a branches; every
    projection has its own factors (nothing is shared between projections). The weight is composed
    on every call, as the authors' code does, so all factors train.
    """

    def __init__(self, in_features: int, out_features: int, branches: int, kernel: int) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.empty(branches, in_features, kernel))
        self.g = nn.Parameter(torch.empty(branches, kernel, kernel))
        self.b = nn.Parameter(torch.empty(branches, kernel, out_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        for factor in (self.a, self.g, self.b):
            _kaiming_per_branch(factor)
        bound = 1 / math.sqrt(in_features)  # nn.Linear's bias init, with the composed weight's fan-in
        nn.init.uniform_(self.bias, -bound, bound)

    def composed_weight(self) -> torch.Tensor:
        """The (out, in) weight of `F.linear`: the transpose of `sum_i A_i g_i B_i`."""
        return (self.a @ self.g @ self.b).sum(dim=0).T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.composed_weight(), self.bias)

    def extra_repr(self) -> str:
        branches, in_features, kernel = self.a.shape
        out_features = self.bias.numel()
        return f"in_features={in_features}, out_features={out_features}, branches={branches}, kernel={kernel}"


class LoRand(BlockInsertion):
    """LoRand adapters `x + up(gelu(down(x)))` on the attention and MLP branch outputs.

    Placed before each residual add (slots `attn_out`, `mlp_out`), as the authors' code
    (`lorand1`, `lorand2`). `down` (m -> n) and `up` (n -> m) are `LoRandLinear`s. Init as that
    code: every A_i, g_i, B_i kaiming-uniform(a=sqrt(5)), biases as nn.Linear's; not
    zero-initialised, so the model starts near, not at, the base model. No dropout.
    Per block: 2(2ab(m + n) + 2ab^2 + m + n).
    """

    config_class = LoRandConfig
    cfg: LoRandConfig

    def insert(self, block: Block) -> None:
        slots = block.slots
        slots.attn_out = self._adapter(block.dim)
        slots.mlp_out = self._adapter(block.dim)

    def _adapter(self, dim: int) -> Residual:
        cfg = self.cfg
        hidden = dim // cfg.factor if cfg.dim is None else cfg.dim
        down = LoRandLinear(dim, hidden, cfg.branches, cfg.kernel)
        up = LoRandLinear(hidden, dim, cfg.branches, cfg.kernel)
        return Residual(Bottleneck(down, up))
