"""Which sites take part in a round."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedcare.core.errors import ConfigError


def sample_sites(sites: Sequence[str], fraction: float, min_sites: int,
                 rng: np.random.Generator) -> list[str]:
    """Sample ``max(min_sites, ceil(fraction * N))`` sites without replacement, in site order.

    Refuses (rather than silently running a smaller round) when fewer sites exist than the
    study's minimum.
    """
    n = len(sites)
    if n < min_sites:
        raise ConfigError(f"strategy needs at least {min_sites} sites, the study has {n}")
    if fraction >= 1.0:
        return list(sites)
    k = min(n, max(min_sites, math.ceil(fraction * n), 1))
    chosen = np.sort(rng.choice(n, size=k, replace=False))
    return [sites[i] for i in chosen]
