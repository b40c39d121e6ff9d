"""RGB <-> HSV on image tensors, with Python's `colorsys` formulas, for the HSV steps of mmseg's
`PhotoMetricDistortion` (torchvision adjusts saturation by a blend with grey instead)."""

from __future__ import annotations

from collections.abc import Callable

import torch

_EPS = 1e-12


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """(3, ...) RGB in [0, 1] -> (3, ...) HSV in [0, 1]: hue as a fraction of the circle."""
    r, g, b = rgb
    value, _ = rgb.max(0)
    chroma = value - rgb.min(0).values
    saturation = torch.where(value > 0, chroma / value.clamp(min=_EPS), 0.0)
    safe = chroma.clamp(min=_EPS)
    rc, gc, bc = (value - r) / safe, (value - g) / safe, (value - b) / safe
    hue = torch.where(value == r, bc - gc, torch.where(value == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.where(chroma > 0, (hue / 6.0) % 1.0, 0.0)
    return torch.stack([hue, saturation, value])


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """(3, ...) HSV in [0, 1] -> (3, ...) RGB in [0, 1]."""
    hue, saturation, value = hsv
    sector = torch.floor(hue * 6.0)
    fraction = hue * 6.0 - sector
    sector = sector.long() % 6
    p = value * (1.0 - saturation)
    q = value * (1.0 - saturation * fraction)
    t = value * (1.0 - saturation * (1.0 - fraction))
    # (r, g, b) per sector of the hue circle, as colorsys.hsv_to_rgb picks them
    table = torch.stack(
        [
            torch.stack([value, t, p]),
            torch.stack([q, value, p]),
            torch.stack([p, value, t]),
            torch.stack([p, q, value]),
            torch.stack([t, p, value]),
            torch.stack([value, p, q]),
        ]
    )
    return table.gather(0, sector.expand(1, 3, *sector.shape)).squeeze(0)


def change_hsv(
    image: torch.Tensor, channel: int, change: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """A uint8 RGB image with one HSV channel (0 hue, 1 saturation, 2 value) changed, rounded back
    to uint8 as mmseg's steps leave their image."""
    hsv = rgb_to_hsv(image.float() / 255.0)
    hsv[channel] = change(hsv[channel])
    return (hsv_to_rgb(hsv) * 255.0).round().clamp(0, 255).to(torch.uint8)
