"""E3VA: parallel low-rank adapters on a gradient highway beside the frozen blocks.

Yin et al., "Parameter-efficient is not sufficient: Exploring Parameter, Memory, and Time Efficient
Adapter Tuning for Dense Predictions" (arXiv:2306.09729). The backbone runs without autograd; only
the highway builds a graph, so training memory and time shrink with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from peft_bench.backbones.base import Backbone, SideNetwork
from peft_bench.layers.bottleneck import Bottleneck, trunc_normal_linears
from peft_bench.layers.slots import Branches, TokenLayout
from peft_bench.methods.base import Method, freeze
from peft_bench.methods.configs import E3VAConfig


class BlockAdapters(nn.Module):
    """The two parallel adapters of one block: `up(drop(gelu(down(.))))` on its attention branch and
    on its MLP branch, summed. Up projections start at zero, so the highway starts on the backbone."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.attn = Bottleneck.linear(dim, hidden, dropout)
        self.mlp = Bottleneck.linear(dim, hidden, dropout)
        for adapter in (self.attn, self.mlp):
            trunc_normal_linears(adapter)
            nn.init.zeros_(adapter.up.weight)
            nn.init.zeros_(adapter.up.bias)

    def forward(self, branches: Branches) -> torch.Tensor:
        attn, mlp = branches
        return self.attn(attn) + self.mlp(mlp)


def carried(
    backbone: Backbone, stage: int, previous: torch.Tensor, lead: torch.Tensor, layout: TokenLayout | None
) -> torch.Tensor:
    """The lead carried into `stage` through the backbone's transition, `merge(x + lead) - merge(x)`,
    in float32 with autocast off. The lead starts at zero and stays small against the stream (3e-4
    of it early on), while a bf16 merge rounds each output to ~4e-3 of the stream: the difference of
    two bf16 merges would be rounding noise (relative error 3-6 at 3e-4). The float32 lead promotes
    the bf16 additions after it."""
    with torch.autocast(previous.device.type, enabled=False):
        previous, lead = previous.float(), lead.float()
        merged = backbone.enter_stage(stage, previous + lead, layout)[0]
        return merged - backbone.enter_stage(stage, previous, layout)[0]


class Highway(SideNetwork):
    """The highway, as its lead over the backbone's stream: per stage, the sum of its blocks' adapter
    outputs plus the lead carried in through the backbone's own (frozen) patch merging.

    The highway is `stream + lead`: it starts on the patch embedding, takes each block's residual
    adds as the stream does and the block's adapter outputs on top, and passes the backbone's
    transition into each stage (a patch merging), so its lead into stage s is
    `merge(x + lead) - merge(x)` of stage s - 1's output `x` and lead. Gradients pass through
    adapters, additions and transitions only, never a block.
    """

    def __init__(self, dims: Sequence[int], depths: Sequence[int], hidden: int, dropout: float) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.ModuleList(BlockAdapters(dim, hidden, dropout) for _ in range(depth))
            for dim, depth in zip(dims, depths, strict=True)
        )

    def forward(
        self,
        backbone: Backbone,
        branches: list[list[Branches]],
        stages: list[torch.Tensor],
        layouts: list[TokenLayout | None],
    ) -> list[torch.Tensor]:
        leads: list[torch.Tensor] = []
        for s, (adapters, taps) in enumerate(zip(self.stages, branches, strict=True)):
            if s == 0:
                lead = torch.zeros_like(stages[0])
            else:
                lead = carried(backbone, s, stages[s - 1], leads[-1], layouts[s - 1])
            for block, block_branches in zip(adapters, taps, strict=True):
                lead = lead + block(block_branches)
            leads.append(lead)
        return leads


class E3VA(Method):
    """Freezes the backbone, sets the highway beside it (`Backbone.side`) and trains the norms
    through which the highway reaches the head: the per-stage output norms of a dense backbone, the
    final norm of a classifier. Per block: 2(2mn + m + n); plus 2m per trained norm.
    """

    config_class = E3VAConfig
    cfg: E3VAConfig

    def apply(self, backbone: Backbone) -> None:
        freeze(backbone)
        stages = [block.stage for block in backbone.transformer_blocks()]
        depths = [stages.count(stage) for stage in range(len(backbone.stage_dims))]
        with torch.device(next(backbone.parameters()).device):
            backbone.side = Highway(backbone.stage_dims, depths, self.cfg.dim, self.cfg.dropout)
        for norm in backbone.head_norms():
            backbone.get_submodule(norm).requires_grad_(True)
