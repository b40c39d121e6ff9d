"""RoIAlign on small CPU feature maps as matrix products: the same numbers as torchvision's kernel.

RoIAlign averages, per output bin, bilinear samples on a grid of the bin. Bilinear interpolation is
separable, and so is the grid (its rows are one set of y's, its columns one set of x's), so a
pooled map is `A @ F @ B.T`: `F` the RoI's image's H x W map (per channel), `A` (bins x H) each
output row's average of its samples' row weights, `B` (bins x W) the same for the columns.
torchvision's CPU kernel samples point by point in one thread, forward and backward; on maps of a few
hundred cells (the embedded scenes' 16 x 16 level), the products and their gradients, plain matmuls,
take 3-5x less time (two threads, `docs/embedded.md`). Their cost grows with the map's area where the
kernel's does not, so larger maps, and every other device, keep torchvision's. As torchvision's op
under autocast, the products run in the maps' own precision, not autocast's.
"""

from __future__ import annotations

import torch
import torchvision

# The largest map (H x W) pooled as products: for RoIs of 4-8 cells on 256 channels (COCO's finest
# level), products took 111 ms against the kernel's 149 at 32x32 and 251 against 156 at 48x48 (256
# RoIs, forward and backward, two threads); RoIs that cover more of the map favour the products.
MAX_CELLS = 32 * 32


def roi_align(
    features: torch.Tensor,
    rois: torch.Tensor,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> torch.Tensor:
    """`torchvision.ops.roi_align` (`rois` as (K, 5) rows of image index and box), as products on
    CPU maps of at most `MAX_CELLS` cells."""
    height, width = features.shape[-2:]
    if features.device.type != "cpu" or height * width > MAX_CELLS:
        return torchvision.ops.roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned)
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, i] * spatial_scale - offset for i in range(1, 5))
    rows = _bin_weights(y1, y2 - y1, output_size[0], height, sampling_ratio, aligned)
    columns = _bin_weights(x1, x2 - x1, output_size[1], width, sampling_ratio, aligned)
    channels = features.shape[1]
    pooled = features.new_empty((len(rois), channels, *output_size))
    images = rois[:, 0].long()
    with torch.autocast("cpu", enabled=False):
        for image in images.unique().tolist():
            index = torch.where(images == image)[0]
            a, b = rows[index].to(features.dtype), columns[index].to(features.dtype)
            # (C*H, W) @ (W, R*PW): every RoI's columns at once, then each RoI's rows.
            across = features[image].reshape(channels * height, width) @ b.reshape(-1, width).T
            across = across.view(channels, height, len(index), output_size[1]).permute(2, 1, 0, 3)
            pooled[index] = (
                (a @ across.reshape(len(index), height, -1))
                .view(len(index), output_size[0], channels, output_size[1])
                .transpose(1, 2)
            )
    return pooled


def _bin_weights(
    start: torch.Tensor, size: torch.Tensor, bins: int, cells: int, sampling_ratio: int, aligned: bool
) -> torch.Tensor:
    """(K, bins, cells): along one axis, each bin's mean over its samples of their linear
    interpolation weights, as torchvision's kernel samples: `sampling_ratio` points a bin (<= 0:
    ceil(size / bins)), a point beyond a cell of the map's edge counts zero, one past the last
    cell's centre takes the last cell."""
    if not aligned:
        size = size.clamp(min=1.0)  # the legacy kernel's RoIs are at least one cell
    step = size / bins
    grid = torch.full_like(size, sampling_ratio) if sampling_ratio > 0 else torch.ceil(step)
    spaced = grid.clamp(min=1)  # an empty RoI (aligned, zero size) has no sample: its bins are 0
    samples = torch.arange(int(spaced.max()) if len(grid) else 1, dtype=size.dtype, device=size.device)
    position = (
        start[:, None, None]
        + torch.arange(bins, dtype=size.dtype, device=size.device)[None, :, None] * step[:, None, None]
        + (samples + 0.5)[None, None, :] * (step / spaced)[:, None, None]
    )  # (K, bins, samples)
    counted = (samples[None, None, :] < grid[:, None, None]) & (position >= -1.0) & (position <= cells)
    position = position.clamp(min=0)
    low = position.floor().long().clamp(max=cells - 1)
    high = (low + 1).clamp(max=cells - 1)
    upper = torch.where(low >= cells - 1, 0.0, position - low)  # the weight of `high`
    weights = torch.zeros(*position.shape, cells, dtype=size.dtype, device=size.device)
    weights.scatter_add_(-1, low[..., None], torch.where(counted, 1 - upper, 0.0)[..., None])
    weights.scatter_add_(-1, high[..., None], torch.where(counted, upper, 0.0)[..., None])
    return weights.sum(2) / spaced[:, None, None]
