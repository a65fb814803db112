"""Standardize features with statistics a federation can compute without pooling rows.

Each site shares only its row count, per-feature sum and per-feature sum of squares; the global
mean and (population, ddof=0) standard deviation follow from those. Sums are taken in float64
so that ``E[x^2] - E[x]^2`` does not lose the variance of large-valued features to rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_ROUNDING = 16 * float(np.finfo(np.float64).eps)
_NEGLIGIBLE = 1e-12


def federated_standardizer(train_arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Global per-feature mean and std (ddof=0) over every row of every site, as float32.

    A constant feature gets std 1, so standardizing it yields zeros instead of NaN.
    """
    if not train_arrays:
        raise ValueError("need at least one site's training array")
    shape = train_arrays[0].shape[1:]
    if any(a.shape[1:] != shape for a in train_arrays):
        raise ValueError(f"sites have different feature shapes: {[a.shape for a in train_arrays]}")
    sums = [site_sums(a) for a in train_arrays]
    return pool_sums([n for n, _, _ in sums], [t for _, t, _ in sums],
                     [sq for _, _, sq in sums])


def pool_sums(counts: Sequence[float], totals: Sequence[np.ndarray],
              totals_sq: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Federation-wide mean and std (ddof=0) from each site's row count, sum and sum of
    squares; a constant feature gets std 1, so standardizing it yields zeros, not NaN."""
    count = float(sum(counts))
    if count == 0:
        raise ValueError("all sites have zero training rows")
    mean = np.sum(totals, axis=0) / count
    mean_sq = np.sum(totals_sq, axis=0) / count
    var = mean_sq - mean * mean
    # Below this the difference is float64 rounding, not spread: the feature is constant.
    var[var <= _ROUNDING * mean_sq] = 0.0
    std = np.sqrt(var)
    # A spread this small (e.g. values near 1e-19) is no spread either: dividing by it would
    # turn rounding noise into huge features (found by Hypothesis with subnormal values).
    std[std <= _NEGLIGIBLE * np.maximum(1.0, np.abs(mean))] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def site_sums(x: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """What one site would send: row count, sum and sum of squares per feature (float64)."""
    x64 = np.asarray(x, dtype=np.float64)
    return len(x64), x64.sum(axis=0), np.square(x64).sum(axis=0)


def apply_standardizer(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` as a new float32 array (``x`` is left untouched)."""
    out = np.asarray(x, dtype=np.float32) - np.asarray(mean, dtype=np.float32)
    out /= np.asarray(std, dtype=np.float32)
    return out
