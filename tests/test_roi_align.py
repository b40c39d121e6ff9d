"""RoIAlign as matrix products on small CPU maps: torchvision's numbers, forward and backward."""

from __future__ import annotations

import pytest
import torch
import torchvision

from peft_bench.models.roi_align import MAX_CELLS, roi_align


def _rois(generator: torch.Generator, images: int, count: int, side: float) -> torch.Tensor:
    """(count, 5) RoIs of `images` images in pixels of a `side`-pixel image: most inside it, some
    crossing or beyond its edges, some thinner than a cell, two of zero size."""
    corner = torch.rand(count, 2, generator=generator, dtype=torch.float64) * side * 1.2 - 0.2 * side
    size = torch.rand(count, 2, generator=generator, dtype=torch.float64) * side * 0.8
    size[:4] *= 0.02
    size[4:6] = 0.0
    image = torch.randint(0, images - 1, (count, 1), generator=generator).double()  # the last has none
    return torch.cat([image, corner, corner + size], dim=1)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 1, 2, 3])
@pytest.mark.parametrize(("output_size", "map_size"), [((7, 7), (16, 16)), ((14, 5), (12, 20))])
def test_pooled_maps_and_their_gradients_equal_torchvisions(
    aligned: bool, sampling_ratio: int, output_size: tuple[int, int], map_size: tuple[int, int]
) -> None:
    generator = torch.Generator().manual_seed(sampling_ratio)
    features = torch.randn(3, 4, *map_size, generator=generator, dtype=torch.float64)
    rois = _rois(generator, images=3, count=40, side=4.0 * max(map_size))
    upstream = torch.randn(len(rois), 4, *output_size, generator=generator, dtype=torch.float64)
    results = []
    for pool in (roi_align, torchvision.ops.roi_align):
        x = features.clone().requires_grad_()
        pooled = pool(x, rois, output_size, 0.25, sampling_ratio, aligned)
        pooled.backward(upstream)
        results.append((pooled.detach(), x.grad))
    (ours, our_grad), (theirs, their_grad) = results
    assert ours.shape == (40, 4, *output_size) and ours.abs().sum() > 0
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    torch.testing.assert_close(our_grad, their_grad, rtol=0, atol=1e-12)
    assert their_grad[2].abs().sum() == 0  # no RoI in the last image


def test_no_rois_pool_to_an_empty_batch() -> None:
    pooled = roi_align(torch.randn(2, 3, 8, 8), torch.zeros(0, 5), (7, 7), 0.25, 0, True)
    assert pooled.shape == (0, 3, 7, 7)


def test_maps_beyond_the_cell_limit_go_to_torchvisions_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    kernel = torchvision.ops.roi_align
    monkeypatch.setattr(torchvision.ops, "roi_align", lambda *args: calls.append(args) or kernel(*args))
    rois = torch.tensor([[0.0, 2, 2, 30, 30]])
    roi_align(torch.randn(1, 2, 16, MAX_CELLS // 16), rois, (7, 7), 1.0, 2, True)
    assert not calls
    large = torch.randn(1, 2, 16, MAX_CELLS // 16 + 1)
    pooled = roi_align(large, rois, (7, 7), 1.0, 2, True)
    assert len(calls) == 1 and torch.equal(pooled, kernel(large, rois, (7, 7), 1.0, 2, True))


def test_products_keep_the_maps_precision_under_autocast() -> None:
    features, rois = torch.randn(1, 3, 16, 16), torch.tensor([[0.0, 3.3, 5.1, 40.2, 51.7]])
    plain = roi_align(features, rois, (7, 7), 0.25, 0, True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = roi_align(features, rois, (7, 7), 0.25, 0, True)
    assert cast.dtype == torch.float32 and torch.equal(cast, plain)
