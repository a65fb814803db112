"""Federation-wide split candidates without sharing rows.

XGBoost's ``hist`` method splits on at most ``max_bin`` quantile cuts per feature (Chen &
Guestrin 2016, section 3.3, weighted quantile sketch). Quantiles do not add across sites, so the
federation computes them in two rounds that only add or compare aggregates:

1. each site sends its per-feature range (:func:`local_ranges`, rounded outward to a few
   significant bits so the hub learns no site's exact extreme value); the hub takes the
   envelope (:func:`merge_ranges`). Extremes cannot be added, so a study whose every
   message goes through secure aggregation sends sums instead (:func:`local_moments`) and
   uses the grid ``mean +- 8 std`` (:func:`moment_grid`);
2. each site counts its values on a common equal-width fine grid over that envelope
   (:func:`local_fine_counts`); counts are sums, so secure aggregation can add them; the hub
   reads the ``max_bin`` quantile cuts off the merged counts (:func:`cut_points`).

The sketch of the merged counts equals the sketch of the pooled data on the same grid exactly:
the sum of the sites' counts *is* the pooled count. Its error against exact quantiles is at most
one fine bin (``(hi - lo) / sketch_bins``).

Cuts are float32 (XGBoost compares float32 values), sorted, one row per feature, padded with
:data:`PAD` (the largest float32: finite, so it crosses the wire, and above every value).
"""

from __future__ import annotations

import numpy as np

#: Padding of a feature's unused cuts: the largest finite float32.
PAD = float(np.finfo(np.float32).max)


def _outward(x: np.ndarray, bits: int, up: bool) -> np.ndarray:
    """``x`` rounded away from the data to ``bits`` significant binary digits."""
    mant, exp = np.frexp(x)
    scaled = mant * 2.0**bits
    scaled = np.ceil(scaled) if up else np.floor(scaled)
    return np.ldexp(scaled / 2.0**bits, exp)


def local_ranges(X: np.ndarray, *, significant_bits: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature (minimum, maximum) of a site's non-missing values, rounded outward to
    ``significant_bits`` binary digits (3: within 12.5%). A feature with no value at the site
    gives (``PAD``, ``-PAD``), which the envelope ignores. Both arrays are finite float64."""
    X = np.asarray(X, dtype=np.float64)
    present = ~np.isnan(X)
    has = present.any(axis=0)
    mins = np.min(np.where(present, X, PAD), axis=0, initial=PAD)
    maxs = np.max(np.where(present, X, -PAD), axis=0, initial=-PAD)
    mins = np.where(has, _outward(mins, significant_bits, up=False), PAD)
    maxs = np.where(has, _outward(maxs, significant_bits, up=True), -PAD)
    return np.clip(mins, -PAD, PAD), np.clip(maxs, -PAD, PAD)


def merge_ranges(mins: np.ndarray, maxs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The federation's envelope from stacked site ranges ``(n_sites, n_features)``; a feature
    no site has keeps ``lo > hi``."""
    lo = np.min(np.asarray(mins, np.float64), axis=0)
    return lo, np.max(np.asarray(maxs, np.float64), axis=0)


def local_moments(X: np.ndarray) -> np.ndarray:
    """Per-feature (count, sum, sum of squares) of a site's non-missing values,
    ``(n_features, 3)``: sums, so secure aggregation can add them (unlike extremes)."""
    X = np.asarray(X, dtype=np.float64)
    present = ~np.isnan(X)
    filled = np.where(present, X, 0.0)
    return np.stack([present.sum(axis=0), filled.sum(axis=0), (filled * filled).sum(axis=0)],
                    axis=1).astype(np.float64)


def moment_grid(summed_moments: np.ndarray, width: float = 8.0) -> tuple[np.ndarray, np.ndarray]:
    """A sums-only alternative to :func:`merge_ranges`: the grid ``mean +- width * std`` of
    each feature from the federation's summed :func:`local_moments` (values beyond it fall in
    the end fine bins). Use it when every message must go through secure aggregation; it
    spends the fine bins less well than the envelope on bounded features. A feature no site
    has keeps ``lo > hi``; a constant one gets a zero-width grid (no cut)."""
    m = np.asarray(summed_moments, np.float64)
    count, total, squares = m[:, 0], m[:, 1], m[:, 2]
    has = count > 0
    safe = np.where(has, count, 1.0)
    mean = total / safe
    std = np.sqrt(np.maximum(squares / safe - mean * mean, 0.0))
    std = np.where(std > 1e-12 * np.maximum(np.abs(mean), 1.0), std, 0.0)
    return np.where(has, mean - width * std, PAD), np.where(has, mean + width * std, -PAD)


def local_fine_counts(X: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                      fine_bins: int) -> np.ndarray:
    """Counts ``(n_features, fine_bins)`` of a site's non-missing values on the equal-width
    grid over ``[lo, hi]`` (values outside are clamped to the end bins). Sums across sites."""
    X = np.asarray(X, dtype=np.float64)
    n_f = X.shape[1]
    lo = np.asarray(lo, np.float64)
    width = np.asarray(hi, np.float64) - lo
    safe = np.where(width > 0, width, 1.0)
    counts = np.zeros((n_f, fine_bins), dtype=np.float64)
    for f in range(n_f):
        col = X[:, f]
        col = col[~np.isnan(col)]
        if col.size == 0 or not width[f] >= 0:
            continue
        idx = np.clip(np.floor((col - lo[f]) / safe[f] * fine_bins), 0, fine_bins - 1)
        counts[f] = np.bincount(idx.astype(np.int64), minlength=fine_bins)
    return counts


def cut_points(summed_counts: np.ndarray, lo: np.ndarray, hi: np.ndarray,
               max_bin: int) -> np.ndarray:
    """The split candidates ``(n_features, max_bin - 1)`` from the federation's fine counts.

    A feature with at most ``max_bin`` occupied fine bins (a low-cardinality feature) gets a
    cut after each occupied bin but the last, as XGBoost cuts between distinct values; other
    features get the ``k / max_bin`` quantiles of the merged counts, each placed at the right
    edge of the fine bin holding it."""
    counts = np.asarray(summed_counts, np.float64)
    n_f, fine = counts.shape
    cuts = np.full((n_f, max_bin - 1), PAD, dtype=np.float64)
    for f in range(n_f):
        total = counts[f].sum()
        if total <= 0 or not hi[f] > lo[f]:
            continue
        cum = np.cumsum(counts[f])
        occupied = np.flatnonzero(counts[f] > 0)
        if occupied.size <= max_bin:
            after = occupied[:-1]
        else:
            targets = total * np.arange(1, max_bin) / max_bin
            after = np.unique(np.searchsorted(cum, targets, side="left"))
            after = after[cum[after] < total]
        edges = lo[f] + (hi[f] - lo[f]) * (after + 1) / fine
        values = np.unique(edges.astype(np.float32)).astype(np.float64)
        cuts[f, :values.size] = values
    return cuts
