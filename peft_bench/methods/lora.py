"""LoRA on the fused qkv projection: low-rank updates of q and v, mergeable for inference."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from peft_bench.backbones.base import Block, Part
from peft_bench.layers.merge import Mergeable
from peft_bench.methods.base import BlockInsertion
from peft_bench.methods.configs import LoRAConfig


def _low_rank_pair(dim: int, rank: int, like: torch.Tensor) -> tuple[nn.Parameter, nn.Parameter]:
    """A (r, m) kaiming-uniform(a=sqrt(5)) and B (m, r) zeros: B A is zero at init."""
    a = nn.Parameter(torch.empty(rank, dim, device=like.device, dtype=like.dtype))
    nn.init.kaiming_uniform_(a, a=math.sqrt(5))
    b = nn.Parameter(torch.zeros(dim, rank, device=like.device, dtype=like.dtype))
    return a, b


class LoRAQKV(Mergeable, nn.Linear):
    """A fused qkv projection (m -> 3m, rows q, k, v) plus `scale * B A` on q and v only.

    The frozen weight and bias are the original Parameter objects, so their state-dict names
    stay (`attn.qkv.weight` / `attn.qkv.bias` in timm's blocks) and pretrained checkpoints load unchanged.
    """

    def __init__(self, qkv: nn.Linear, rank: int, alpha: float) -> None:
        # Built on the meta device: the base weight and bias are taken over, not allocated.
        super().__init__(qkv.in_features, qkv.out_features, bias=qkv.bias is not None, device="meta")
        self.weight = qkv.weight
        self.bias = qkv.bias
        self.scale = alpha / rank
        self.a_q, self.b_q = _low_rank_pair(qkv.in_features, rank, qkv.weight)
        self.a_v, self.b_v = _low_rank_pair(qkv.in_features, rank, qkv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`W0 x + b`, plus `scale * B A x` on q and v: one GEMM for both down projections (A_q and A_v
        stacked, a weight-sized copy) and each up projection fused with the scale and the add
        (`addmm`), so the update costs no pass over the output beyond the concatenation."""
        if self.merged:
            return super().forward(x)
        rows = x.flatten(0, -2)
        q, k, v = F.linear(rows, self.weight, self.bias).chunk(3, dim=-1)
        down_q, down_v = F.linear(rows, torch.cat((self.a_q, self.a_v))).chunk(2, dim=-1)
        q = torch.addmm(q, down_q, self.b_q.t(), alpha=self.scale)
        v = torch.addmm(v, down_v, self.b_v.t(), alpha=self.scale)
        return torch.cat((q, k, v), dim=-1).unflatten(0, x.shape[:-1])

    def delta_weight(self) -> torch.Tensor:
        """The update as a (3m, m) matrix: `scale * B A` in the q and v rows, zeros for k."""
        delta_q = self.b_q @ self.a_q
        delta_v = self.b_v @ self.a_v
        return self.scale * torch.cat((delta_q, torch.zeros_like(delta_q), delta_v))

    def fold(self) -> None:
        """`scale * B A` into the frozen weight: the merged weight is then what `attn.qkv.weight` holds."""
        self.weight += self.delta_weight()

    def merge_targets(self) -> list[torch.Tensor]:
        return [self.weight]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.a_q.shape[0]}, scale={self.scale}, merged={self.merged}"


class LoRA(BlockInsertion):
    """Low-rank updates of q and v in every block's fused qkv projection; k untouched. Per block: 4rm.

    Init as the reference (A kaiming-uniform, B zeros): the model equals the base model at init.
    """

    config_class = LoRAConfig
    cfg: LoRAConfig

    def insert(self, block: Block) -> None:
        block.replace(Part.qkv, LoRAQKV(block.part(Part.qkv), self.cfg.rank, self.cfg.alpha))
