"""The federation-wide sketch: counts add across sites, so the merged sketch is the pooled one."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedcare.trees.sketch import (
    PAD,
    cut_points,
    local_fine_counts,
    local_moments,
    local_ranges,
    merge_ranges,
    moment_grid,
)

values = st.one_of(st.floats(-1e6, 1e6, allow_nan=False, width=32), st.just(float("nan")))


@st.composite
def split_rows(draw: st.DrawFn) -> tuple[np.ndarray, list[np.ndarray]]:
    """A matrix (with NaNs) and its rows dealt to 1..5 sites (some possibly empty)."""
    X = draw(hnp.arrays(np.float64, st.tuples(st.integers(1, 40), st.integers(1, 4)),
                        elements=values))
    owner = np.asarray(draw(st.lists(st.integers(0, 4), min_size=len(X), max_size=len(X))))
    return X, [X[owner == s] for s in range(5)]


def _federated_ranges(parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    ranges = [local_ranges(p) for p in parts]
    return merge_ranges(np.stack([r[0] for r in ranges]), np.stack([r[1] for r in ranges]))


@given(split_rows(), st.integers(2, 64))
def test_merged_sketch_equals_pooled_sketch(data: tuple[np.ndarray, list[np.ndarray]],
                                            max_bin: int) -> None:
    X, parts = data
    lo, hi = _federated_ranges(parts)
    pooled_lo, pooled_hi = local_ranges(X)
    assert np.array_equal(lo, pooled_lo) and np.array_equal(hi, pooled_hi)
    summed = sum(local_fine_counts(p, lo, hi, 256) for p in parts)
    pooled = local_fine_counts(X, lo, hi, 256)
    assert np.array_equal(summed, pooled)
    assert summed.sum() == np.count_nonzero(~np.isnan(X))
    assert np.array_equal(cut_points(summed, lo, hi, max_bin), cut_points(pooled, lo, hi, max_bin))


@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 30), st.integers(1, 3)), elements=values))
def test_ranges_contain_the_data_and_are_finite(X: np.ndarray) -> None:
    mins, maxs = local_ranges(X)
    assert np.isfinite(mins).all() and np.isfinite(maxs).all()
    for f in range(X.shape[1]):
        col = X[~np.isnan(X[:, f]), f]
        if col.size:
            assert mins[f] <= col.min() and maxs[f] >= col.max()
        else:
            assert (mins[f], maxs[f]) == (PAD, -PAD)


def test_ranges_are_rounded_outward_to_three_bits() -> None:
    mins, maxs = local_ranges(np.array([[143.0, -3.3], [2501.0, -0.7]]))
    assert list(mins) == [128.0, -3.5] and list(maxs) == [2560.0, -0.625]


def test_feature_missing_everywhere_gets_no_cuts() -> None:
    X = np.array([[1.0, np.nan], [2.0, np.nan], [3.0, np.nan]])
    lo, hi = local_ranges(X)
    cuts = cut_points(local_fine_counts(X, lo, hi, 64), lo, hi, 8)
    assert cuts.shape == (2, 7) and (cuts[1] == PAD).all()


def test_rare_value_of_low_cardinality_feature_keeps_its_cut() -> None:
    X = np.r_[np.zeros(995), np.ones(5), np.full(3, 2.0)][:, None]
    lo, hi = local_ranges(X)
    cuts = cut_points(local_fine_counts(X, lo, hi, 1024), lo, hi, 64)[0]
    real = cuts[cuts < PAD]
    assert real.size == 2 and 0 < real[0] <= 1 < real[1] <= 2


def test_quantile_cuts_are_close_to_exact_quantiles() -> None:
    rng = np.random.default_rng(0)
    X = rng.lognormal(size=(20_000, 1))
    lo, hi = local_ranges(X)
    cuts = cut_points(local_fine_counts(X, lo, hi, 65_536), lo, hi, 16)[0]
    assert cuts.dtype == np.float64 and np.array_equal(cuts, cuts.astype(np.float32))
    assert np.all(np.diff(cuts) > 0) and (cuts < PAD).all()
    share_below = (X[:, 0][:, None] < cuts[None, :]).mean(axis=0)
    assert np.allclose(share_below, np.arange(1, 16) / 16, atol=0.01)


@given(split_rows())
def test_moments_add_across_sites(data: tuple[np.ndarray, list[np.ndarray]]) -> None:
    X, parts = data
    summed = sum(local_moments(p) for p in parts)
    assert np.allclose(summed, local_moments(X), rtol=1e-9, atol=1e-3)
    lo, hi = moment_grid(summed)
    assert np.isfinite(lo).all() and np.isfinite(hi).all()


def test_moment_grid_is_mean_plus_minus_width_std() -> None:
    rng = np.random.default_rng(1)
    X = np.c_[rng.normal(5.0, 2.0, 10_000), np.full(10_000, 3.0), np.full(10_000, np.nan)]
    lo, hi = moment_grid(sum(local_moments(p) for p in np.array_split(X, 4)), width=8)
    assert np.allclose([lo[0], hi[0]], [5 - 16, 5 + 16], atol=0.3)
    assert lo[1] == hi[1] == 3.0 and lo[2] > hi[2]
    cuts = cut_points(local_fine_counts(X, lo, hi, 4096), lo, hi, 16)
    share_below = (X[:, 0][:, None] < cuts[0][None, :]).mean(axis=0)
    assert np.allclose(share_below, np.arange(1, 16) / 16, atol=0.01)
    assert (cuts[1:] == PAD).all()
