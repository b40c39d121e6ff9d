"""How far apart the means of methods that do not differ lie by chance: the yardstick for a table's
"does this column separate its methods" line (docs/statistics.md)."""

from __future__ import annotations

import math
from functools import cache

from scipy.integrate import quad
from scipy.stats import norm


@cache
def expected_range(draws: int) -> float:
    """E[max - min] of `draws` independent standard normal draws, in sigmas:
    the integral over x of 1 - Phi(x)^k - (1 - Phi(x))^k."""
    if draws < 2:
        return 0.0
    value, _ = quad(lambda x: 1.0 - norm.cdf(x) ** draws - norm.sf(x) ** draws, -math.inf, math.inf)
    return value


def chance_span(methods: int, seeds: int) -> float:
    """The expected span of `methods` means of `seeds` seeds each, in seed stds, when every method
    scores alike: a mean's sigma is the seed sigma over sqrt(seeds)."""
    return expected_range(methods) / math.sqrt(seeds)
