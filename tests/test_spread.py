"""The chance span of method means against the range constants of quality control (d2, Tippett)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from peft_bench.stats.spread import chance_span, expected_range


@pytest.mark.parametrize(("draws", "d2"), [(2, 1.128), (3, 1.693), (4, 2.059), (5, 2.326), (10, 3.078)])
def test_expected_range_is_the_d2_constant(draws: int, d2: float) -> None:
    assert expected_range(draws) == pytest.approx(d2, abs=5e-4)


def test_chance_span_matches_simulated_means() -> None:
    """Ten methods alike, three seeds each: the span of their means over the seed sigma."""
    rng = np.random.default_rng(0)
    means = rng.standard_normal((20_000, 10, 3)).mean(axis=-1)
    simulated = np.ptp(means, axis=-1).mean()
    assert chance_span(10, 3) == pytest.approx(simulated, rel=0.02)
    assert chance_span(10, 3) == pytest.approx(3.0775 / math.sqrt(3), abs=1e-3)
    assert expected_range(1) == 0.0
