"""Operations on (B, C, H, W) feature maps shared by heads and metrics."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear, align_corners=False, as mmseg resizes maps and logits."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
