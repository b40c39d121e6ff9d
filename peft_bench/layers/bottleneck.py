"""Building blocks that the adapter-style methods share: the bottleneck, the inner skip, the init."""

from __future__ import annotations

import torch
from torch import nn


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


# The std of every Linear a method adds, in the Mona authors' backbones (`_init_weights`).
REFERENCE_INIT_STD = 0.02


def trunc_normal_linears(module: nn.Module, std: float = REFERENCE_INIT_STD) -> None:
    """Init every Linear of `module` as Swin's `_init_weights`: trunc-normal weight, zero bias.

    The cut-off stays torch's and timm's default (+-2, absolute), as in the reference code.
    """
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std)
            nn.init.zeros_(m.bias)
