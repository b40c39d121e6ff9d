"""The HSV steps of mmseg's PhotoMetricDistortion (ADE20K training), against Python's colorsys."""

from __future__ import annotations

import colorsys

import pytest
import torch

from peft_bench.data.ade20k import photometric_distortion
from peft_bench.data.colour import change_hsv, hsv_to_rgb, rgb_to_hsv


def image(seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    pixels = torch.randint(0, 256, (3, 6, 7), dtype=torch.uint8)
    pixels[:, 0, 0] = 0  # black, grey and a primary: the formulas' special cases
    pixels[:, 0, 1] = 128
    pixels[:, 0, 2] = torch.tensor([255, 0, 0])
    return pixels


def colorsys_step(pixels: torch.Tensor, change) -> torch.Tensor:
    """The same step pixel by pixel with colorsys, rounded to uint8."""
    out = torch.empty_like(pixels)
    for i in range(pixels.shape[1]):
        for j in range(pixels.shape[2]):
            h, s, v = colorsys.rgb_to_hsv(*(pixels[:, i, j].double() / 255).tolist())
            rgb = colorsys.hsv_to_rgb(*change(h, s, v))
            out[:, i, j] = torch.tensor([min(255, max(0, round(c * 255))) for c in rgb])
    return out


def test_rgb_hsv_round_trip_and_colorsys_agree() -> None:
    rgb = image().double() / 255
    hsv = rgb_to_hsv(rgb)
    expected = colorsys_step(image(), lambda h, s, v: (h, s, v))
    assert torch.equal(expected, image())
    for i in range(rgb.shape[1]):
        for j in range(rgb.shape[2]):
            assert hsv[:, i, j].tolist() == pytest.approx(colorsys.rgb_to_hsv(*rgb[:, i, j].tolist()))
    torch.testing.assert_close(hsv_to_rgb(hsv), rgb)


@pytest.mark.parametrize("factor", [0.5, 1.3])
def test_saturation_step_scales_hsv_saturation(factor: float) -> None:
    ours = change_hsv(image(), 1, lambda s: (s * factor).clamp(0, 1))
    reference = colorsys_step(image(), lambda h, s, v: (h, min(1.0, s * factor), v))
    assert (ours.int() - reference.int()).abs().max() <= 1  # float32 against float64 rounding


@pytest.mark.parametrize("steps", [-18, 7])
def test_hue_step_turns_the_hue_by_cv2_steps_of_two_degrees(steps: int) -> None:
    ours = change_hsv(image(), 0, lambda h: (h + steps / 180) % 1.0)
    reference = colorsys_step(image(), lambda h, s, v: ((h + steps / 180) % 1.0, s, v))
    assert (ours.int() - reference.int()).abs().max() <= 1


def test_the_distortion_keeps_greys_grey_and_changes_colours() -> None:
    """Saturation and hue leave a grey image grey (no chroma); brightness and contrast keep it uint8."""
    torch.manual_seed(3)
    grey = torch.full((3, 4, 4), 100, dtype=torch.uint8)
    for _ in range(20):
        out = photometric_distortion(grey)
        assert out.dtype == torch.uint8 and (out == out[0:1]).all()
    colours = [photometric_distortion(image(1)) for _ in range(20)]
    assert any(not torch.equal(out, image(1)) for out in colours)
