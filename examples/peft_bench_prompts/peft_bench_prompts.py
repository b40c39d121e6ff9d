"""Prompt tuning as a peft_bench plugin: a method outside the package, registered by installing it.

Every block of the backbone, of any family, gets `tokens` learnable prompt tokens that its attention
also attends to (the token-level slot `attn_prefix`, the place of VPT-deep's prompts); the backbone
stays frozen.
"""

from dataclasses import dataclass

import torch
from torch import nn

from peft_bench.methods import Block, BlockInsertion, MethodConfig, register_method


@dataclass
class PromptsConfig(MethodConfig):
    tokens: int = 4  # prompt tokens per block


class Prompts(nn.Module):
    def __init__(self, count: int, dim: int) -> None:
        super().__init__()
        self.tokens = nn.Parameter(nn.init.trunc_normal_(torch.empty(count, dim), std=0.02))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens  # the same prompts for every image


@register_method("prompts", config=PromptsConfig, label="Prompts")
class PromptTuning(BlockInsertion):
    cfg: PromptsConfig

    def insert(self, block: Block) -> None:
        block.slots.attn_prefix = Prompts(self.cfg.tokens, block.dim)
