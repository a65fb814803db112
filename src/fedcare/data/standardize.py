"""Standardize features with statistics a federation can compute without pooling rows.

Each site shares only its row count, per-feature sum and per-feature sum of squares; the global
mean and (population, ddof=0) standard deviation follow from those. Sums are taken in float64
so that ``E[x^2] - E[x]^2`` does not lose the variance of large-valued features to rounding.

Under differential privacy the released sums must have a known sensitivity, so each value is
first clipped to its declared range ``[low, high]`` (``data.stats_clip``) and mapped onto
``u = (x - c) / h`` in ``[-1, 1]`` (``c`` the range's centre, ``h`` its half-width): one row
then adds ``[1, u, u^2]`` to the site's ``[count, Σu, Σu²]``, a vector of L2 norm at most
``sqrt(1 + 2d)`` for ``d`` features (:func:`bounded_sensitivity`) - what the Gaussian noise is
calibrated to. Centring matters: a feature in ``[1000, 1010]`` has all its spread in the
last digits of ``x / 1010`` and the noise would swamp it, while ``u`` uses the whole of
``[-1, 1]``. The pooled (noisy) moments are post-processed back onto the feature's scale by
:func:`pool_bounded`, which also clamps them to what values in the range can produce and
floors the standard deviation (:data:`DP_STD_FLOOR`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

_ROUNDING = 16 * float(np.finfo(np.float64).eps)
_NEGLIGIBLE = 1e-12
#: With noised statistics, the smallest standard deviation a feature is given, as a share of
#: its declared range's half-width. DP noise can make ``E[u^2] - E[u]^2`` zero or negative
#: (the true spread is below the noise): the floor keeps the division finite and bounds how
#: far standardizing can stretch such a feature (at most 1/DP_STD_FLOOR half-widths).
DP_STD_FLOOR = 0.01


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


def stats_bounds(clip: Sequence[float] | Mapping[str, Sequence[float]],
                 feature_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature ``(low, high)`` float64 arrays from ``data.stats_clip``: one ``[low, high]``
    for every feature, or a table naming each feature's range (every feature listed)."""
    if isinstance(clip, Mapping):
        missing = [f for f in feature_names if f not in clip]
        unknown = sorted(set(clip) - set(feature_names))
        if missing or unknown:
            raise ValueError(f"data.stats_clip must give a range for every feature and no "
                             f"other: missing {missing}, unknown {unknown}")
        pairs = [tuple(clip[f]) for f in feature_names]
    else:
        pairs = [tuple(clip)] * len(feature_names)
    low = np.array([float(p[0]) for p in pairs], dtype=np.float64)
    high = np.array([float(p[1]) for p in pairs], dtype=np.float64)
    if not (np.isfinite(low).all() and np.isfinite(high).all() and (low < high).all()):
        raise ValueError("data.stats_clip ranges must be finite with low < high")
    return low, high


def bounded_sums(x: np.ndarray, low: np.ndarray, high: np.ndarray
                 ) -> tuple[int, np.ndarray, np.ndarray]:
    """A site's ``(count, Σu, Σu²)`` with ``u = (clip(x, low, high) - c) / h`` in [-1, 1]
    per feature (float64): every row's contribution is bounded, so the sums can be noised."""
    x64 = np.asarray(x, dtype=np.float64)
    centre, half = (low + high) / 2, (high - low) / 2
    u = (np.clip(x64, low, high) - centre) / half
    np.clip(u, -1.0, 1.0, out=u)  # rounding of (x - c) / h at the range's ends
    return len(u), u.sum(axis=0), np.square(u).sum(axis=0)


#: Fixed-point grid (``2^-STATS_FRAC_BITS`` in ``u`` units) of DP statistics: the noise is an
#: exact discrete Gaussian on it (:mod:`fedcare.privacy.dp.discrete_gaussian`), as DP-FedAvg's.
STATS_FRAC_BITS = 16


def bounded_grid_sums(x: np.ndarray, low: np.ndarray, high: np.ndarray,
                      frac_bits: int = STATS_FRAC_BITS, *, observed: bool = False
                      ) -> np.ndarray:
    """:func:`bounded_sums` on the grid ``2^-frac_bits``, as int64 grid steps
    ``[n·2^f, Σk_u..., Σk_q...]``: each row's ``u`` is rounded to ``k_u`` (``|k_u| <= 2^f``)
    and its square to ``k_q`` (``0 <= k_q <= 2^f``) BEFORE summing, so one row adds at most
    ``2^f·sqrt(1 + 2d)`` grid steps in L2 - exactly, with no rounding term - and the sums
    are exact integers (below 2^53 for fewer than ``2^(53-f)`` rows).

    ``observed`` (a study that imputes): missing values (NaN) add nothing to ``Σk_u`` and
    ``Σk_q`` and the vector ends with each feature's count of observed values (``2^f`` grid
    steps per value), one more bounded entry per feature (:func:`bounded_sensitivity`)."""
    x64 = np.asarray(x, dtype=np.float64)
    if len(x64) >= 2 ** (53 - frac_bits):
        raise ValueError(f"too many rows ({len(x64)}) for exact sums on a 2^-{frac_bits} grid")
    seen = ~np.isnan(x64)
    if not observed and not seen.all():
        raise ValueError("feature values are missing and the study does not impute")
    centre, half = (low + high) / 2, (high - low) / 2
    u = np.clip((np.clip(np.where(seen, x64, centre), low, high) - centre) / half, -1.0, 1.0)
    one = 2**frac_bits
    k_u = np.rint(u * one).astype(np.int64)
    k_q = np.clip(np.rint(np.square(k_u.astype(np.float64)) / one), 0, one).astype(np.int64)
    k_q[~seen] = 0
    parts = [[len(x64) * one], k_u.sum(axis=0), k_q.sum(axis=0)]
    if observed:
        parts.append(seen.sum(axis=0).astype(np.int64) * one)
    return np.concatenate(parts)


def bounded_sensitivity(n_features: int, *, observed: bool = False) -> float:
    """L2 norm bound of one row's ``[1, u, u²]`` (``|u| <= 1``): ``sqrt(1 + 2d)``; with the
    observed-value counts of a study that imputes, ``[1, u, u², m]`` (``m`` in {0, 1}):
    ``sqrt(1 + 3d)``."""
    return float(np.sqrt(1 + (3 if observed else 2) * n_features))


def site_sums_observed(x: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`site_sums` over the observed values (NaN = missing), plus each feature's count
    of observed values: what a site of a study that imputes sends."""
    x64 = np.asarray(x, dtype=np.float64)
    seen = ~np.isnan(x64)
    v = np.where(seen, x64, 0.0)
    return len(x64), v.sum(axis=0), np.square(v).sum(axis=0), seen.sum(axis=0).astype(
        np.float64)


def impute_sums(count: float, total: np.ndarray, total_sq: np.ndarray, observed: np.ndarray,
                *, bounded: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean imputation from pooled sums: the fill value (the mean of the observed values) and
    the sums the federation's rows have once every missing value holds it, from which
    :func:`pool_sums` (or, ``bounded``, :func:`pool_bounded`) gives the standardization.

    ``bounded``: the sums are DP-noised ``u`` units; post-processing only, so the observed
    counts are clamped to [1, count] and the fill to [-1, 1]. Unbounded, a feature with no
    observed value at any site is an error (there is nothing to fill it with)."""
    n = float(count)
    obs = np.asarray(observed, dtype=np.float64)
    total = np.asarray(total, dtype=np.float64)
    if bounded:
        obs = np.clip(obs, 1.0, max(n, 1.0))
        fill = np.clip(total / obs, -1.0, 1.0)
    else:
        if (obs <= 0).any():
            raise ValueError("feature(s) at positions "
                             f"{np.nonzero(obs <= 0)[0].tolist()} have no observed value at "
                             "any site; drop them from data.features")
        fill = total / obs
    missing = np.maximum(n - obs, 0.0)
    return fill, total + missing * fill, np.asarray(total_sq, np.float64) + missing * fill**2


def pool_bounded(count: float, sum_u: np.ndarray, sumsq_u: np.ndarray, low: np.ndarray,
                 high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Federation-wide mean and std (float32) from (possibly DP-noised) pooled bounded sums.

    Post-processing only (it costs no privacy): the count is floored at 1, ``E[u]`` clamped
    to [-1, 1] and ``E[u²]`` to [``E[u]²``, 1], so the variance is never negative; the std is
    then floored at :data:`DP_STD_FLOOR` half-widths (a non-positive noisy variance says the
    spread is below the noise, not that it is zero) and is at most one half-width (the
    largest std values in the range can have).
    """
    n = max(float(count), 1.0)
    mean_u = np.clip(np.asarray(sum_u, dtype=np.float64) / n, -1.0, 1.0)
    mean_sq = np.clip(np.asarray(sumsq_u, dtype=np.float64) / n, mean_u * mean_u, 1.0)
    std_u = np.clip(np.sqrt(mean_sq - mean_u * mean_u), DP_STD_FLOOR, 1.0)
    centre, half = (low + high) / 2, (high - low) / 2
    return (centre + half * mean_u).astype(np.float32), (half * std_u).astype(np.float32)
