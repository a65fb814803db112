from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedcare.core.errors import DataError
from fedcare.data import (
    partition_by_attribute,
    partition_dirichlet,
    partition_iid,
    split_train_test,
)


def _assert_exact_cover(shards: list[np.ndarray], n_rows: int) -> None:
    """Every row in exactly one shard; shards sorted, so disjoint + covering == one concat."""
    for s in shards:
        assert s.ndim == 1 and np.issubdtype(s.dtype, np.integer)
        assert np.all(np.diff(s) > 0)
    np.testing.assert_array_equal(np.sort(np.concatenate(shards)), np.arange(n_rows))


@given(n_rows=st.integers(1, 300), n_sites=st.integers(1, 12), seed=st.integers(0, 2**32))
def test_iid_is_an_exact_cover_of_balanced_shards(n_rows: int, n_sites: int, seed: int) -> None:
    n_sites = min(n_sites, n_rows)

    shards = partition_iid(n_rows, n_sites, seed)

    assert len(shards) == n_sites
    _assert_exact_cover(shards, n_rows)
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


def test_iid_matches_the_specified_algorithm() -> None:
    perm = np.random.default_rng(7).permutation(103)
    expected = [np.sort(s) for s in np.array_split(perm, 4)]

    got = partition_iid(103, 4, 7)

    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("n_rows,n_sites,match", [(10, 0, "at least 1"), (3, 4, "fewer sites")])
def test_iid_validates_arguments(n_rows: int, n_sites: int, match: str) -> None:
    with pytest.raises(DataError, match=match):
        partition_iid(n_rows, n_sites, 0)


labels = st.lists(st.integers(0, 4), min_size=20, max_size=300).map(np.array)


@given(y=labels, n_sites=st.integers(1, 5), alpha=st.floats(0.3, 100),
       seed=st.integers(0, 2**32))
def test_dirichlet_is_an_exact_cover_with_min_rows(y: np.ndarray, n_sites: int, alpha: float,
                                                   seed: int) -> None:
    try:
        shards = partition_dirichlet(y, n_sites, alpha, seed, min_rows=2)
    except DataError as err:  # a legitimately impossible draw must say what to change
        assert "raise data.alpha" in str(err)
        return

    assert len(shards) == n_sites
    _assert_exact_cover(shards, len(y))
    assert min(len(s) for s in shards) >= 2


def test_dirichlet_is_deterministic_under_seed() -> None:
    y = np.random.default_rng(0).integers(0, 3, size=500)

    a = partition_dirichlet(y, 4, 0.5, seed=11)
    b = partition_dirichlet(y, 4, 0.5, seed=11)
    c = partition_dirichlet(y, 4, 0.5, seed=12)

    assert all(np.array_equal(s, t) for s, t in zip(a, b, strict=True))
    assert not all(np.array_equal(s, t) for s, t in zip(a, c, strict=True))


def test_dirichlet_matches_the_documented_algorithm() -> None:
    y = np.random.default_rng(1).integers(0, 3, size=200)
    rng = np.random.default_rng(5)
    parts: list[list[np.ndarray]] = [[] for _ in range(4)]
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        p = rng.dirichlet(np.full(4, 1.0))
        cuts = (np.cumsum(p) * len(idx)).astype(np.int64)[:-1]
        for site, piece in enumerate(np.split(idx, cuts)):
            parts[site].append(piece)
    expected = [np.sort(np.concatenate(ps)) for ps in parts]
    assert min(len(s) for s in expected) >= 2  # the first draw is accepted

    got = partition_dirichlet(y, 4, 1.0, seed=5)

    assert all(np.array_equal(g, e) for g, e in zip(got, expected, strict=True))


def test_small_alpha_skews_labels_more_than_large_alpha() -> None:
    y = np.repeat(np.arange(4), 250)

    def skew(alpha: float) -> float:
        shards = partition_dirichlet(y, 5, alpha, seed=0)
        share = [np.bincount(y[s], minlength=4) / len(s) for s in shards]
        return float(np.mean([np.abs(p - 0.25).sum() for p in share]))

    assert skew(0.1) > 3 * skew(100.0)


def test_dirichlet_gives_up_with_advice() -> None:
    y = np.repeat([0, 1], 50)
    with pytest.raises(DataError, match=r"raise data.alpha.*lower the number of sites"):
        partition_dirichlet(y, 8, 0.001, seed=0, min_rows=5)


@pytest.mark.parametrize("kwargs,match", [
    ({"alpha": 0.0}, "alpha"),
    ({"alpha": float("nan")}, "alpha"),
    ({"alpha": -1.0}, "alpha"),
    ({"n_sites": 0}, "at least 1"),
    ({"n_sites": 11}, "fewer sites"),
    ({"min_rows": 3, "n_sites": 4}, "fewer sites or more data"),
    ({"min_rows": -1}, "min_rows"),
])
def test_dirichlet_validates_arguments(kwargs: dict, match: str) -> None:
    args = {"y": np.arange(10) % 2, "n_sites": 2, "alpha": 1.0, "seed": 0} | kwargs
    with pytest.raises(DataError, match=match):
        partition_dirichlet(**args)


def test_dirichlet_rejects_2d_labels() -> None:
    with pytest.raises(DataError, match="one label per row"):
        partition_dirichlet(np.zeros((10, 1)), 2, 1.0, 0)


@given(st.lists(st.sampled_from(["north", "south", "east", "west"]), min_size=1, max_size=80))
def test_attribute_partition_one_site_per_value(values: list[str]) -> None:
    arr = np.array(values, dtype=object)

    shards = partition_by_attribute(arr)

    assert list(shards) == sorted(set(values))
    _assert_exact_cover(list(shards.values()), len(values))
    for name, idx in shards.items():
        assert all(arr[i] == name for i in idx)


def test_attribute_partition_names_numbers_with_str() -> None:
    shards = partition_by_attribute(np.array([3, 1, 3, 2]))
    assert {k: v.tolist() for k, v in shards.items()} == {"1": [1], "2": [3], "3": [0, 2]}


@pytest.mark.parametrize("values,match", [
    (np.array(["a", None, "b"], dtype=object), "missing in 1 row"),
    (np.array([1.0, np.nan]), "missing in 1 row"),
    (np.array([1, "a"], dtype=object), "mixes value types"),
    (np.array([], dtype=object), "non-empty"),
])
def test_attribute_partition_errors(values: np.ndarray, match: str) -> None:
    with pytest.raises(DataError, match=match):
        partition_by_attribute(values)


@given(indices=st.sets(st.integers(0, 10_000), max_size=200).map(lambda s: np.array(sorted(s))),
       fraction=st.floats(0, 0.99), seed=st.integers(0, 2**32))
def test_split_is_disjoint_and_covering(indices: np.ndarray, fraction: float, seed: int) -> None:
    train, test = split_train_test(indices, fraction, seed)

    assert len(np.intersect1d(train, test)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), indices)
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)
    assert len(test) == round(fraction * len(indices))


def test_split_matches_the_specified_algorithm() -> None:
    indices = np.arange(5, 45)
    perm = np.random.default_rng(9).permutation(indices)

    train, test = split_train_test(indices, 0.25, 9)

    np.testing.assert_array_equal(test, np.sort(perm[:10]))
    np.testing.assert_array_equal(train, np.sort(perm[10:]))
    assert split_train_test(indices, np.float32(0.25), 9)[1].tolist() == test.tolist()


@pytest.mark.parametrize("fraction", [1.0, -0.1, float("nan"), 2])
def test_split_validates_fraction(fraction: float) -> None:
    with pytest.raises(DataError, match="test_fraction"):
        split_train_test(np.arange(10), fraction, 0)
