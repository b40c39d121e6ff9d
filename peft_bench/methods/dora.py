"""DoRA on the fused qkv projection: LoRA's q and v updates, each row renormalised to a learnt
magnitude; mergeable for inference."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peft_bench.backbones.base import Block, Part
from peft_bench.methods.base import BlockInsertion
from peft_bench.methods.configs import DoRAConfig
from peft_bench.methods.lora import LoRAQKV


def row_norms(weight: torch.Tensor) -> torch.Tensor:
    """The L2 norm of each output feature's row of an (out, in) weight, as Hugging Face peft."""
    return torch.linalg.vector_norm(weight, dim=1)


class DoRAQKV(LoRAQKV):
    """A fused qkv projection whose q and v rows are `m * V / ||V||`, `V = W0 + scale * B A`.

    k is untouched; the bias is added after the renormalisation and not scaled (as Hugging Face
    peft). `||V||` is a constant in the backward (detached), as the DoRA paper's Sec. 4.3 and
    peft do: gradients reach m directly and B A only through the numerator, which saves the
    norm's backward and its memory.
    """

    def __init__(self, qkv: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__(qkv, rank, alpha)
        with torch.no_grad():
            norm_q, _, norm_v = row_norms(qkv.weight).chunk(3)
        self.m_q = nn.Parameter(norm_q.clone())
        self.m_v = nn.Parameter(norm_v.clone())

    def dora_weight(self) -> torch.Tensor:
        """The (3m, m) weight that the layer applies: W0 on the k rows, `m * V / ||V||` on q and v."""
        direction_q, weight_k, direction_v = (self.weight + self.delta_weight()).chunk(3)
        q = direction_q * (self.m_q / row_norms(direction_q).detach()).unsqueeze(1)
        v = direction_v * (self.m_v / row_norms(direction_v).detach()).unsqueeze(1)
        return torch.cat((q, weight_k, v))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's weight formed each step, then one GEMM: its backward has one weight-gradient
        GEMM, where peft's form (`m / ||V||` times LoRA's output, `tests/test_ssf_dora.py`) has four
        passes over the q and v outputs instead; on the bench (swin_t, 128 px) this form is the faster
        (docs/methods.md)."""
        return F.linear(x, self.weight if self.merged else self.dora_weight(), self.bias)

    def fold(self) -> None:
        """`dora_weight()` into the frozen weight."""
        self.weight.copy_(self.dora_weight())


class DoRA(BlockInsertion):
    """DoRA on q and v of every block's fused qkv projection; k untouched. Per block: 4rm + 2m.

    A, B as LoRA (kaiming-uniform, zeros) and m = ||W0|| per row: the model equals the base at init.
    """

    config_class = DoRAConfig
    cfg: DoRAConfig

    def insert(self, block: Block) -> None:
        block.replace(Part.qkv, DoRAQKV(block.part(Part.qkv), self.cfg.rank, self.cfg.alpha))
