"""Site side: bins agree with XGBoost's split test, histograms add across sites, and a tree
grown from the sites' summed histograms is the tree grown on the pooled rows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedcare.core.errors import ValidationError
from fedcare.trees.ensemble import LEAF, OPEN, SPLIT, Ensemble
from fedcare.trees.histogram import bin_matrix, grad_hess, level_histograms, route_rows
from fedcare.trees.options import tree_options
from fedcare.trees.simulate import fit_federated
from fedcare.trees.sketch import PAD
from fedcare.trees.split import with_siblings

values = st.one_of(st.floats(-100, 100, allow_nan=False, width=32), st.just(float("nan")))


@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 30), st.integers(1, 3)), elements=values),
       st.lists(st.floats(-100, 100, width=32), min_size=1, max_size=7, unique=True))
def test_bin_is_at_most_b_exactly_when_value_below_cut_b(X: np.ndarray, cut: list[float]) -> None:
    real = np.sort(np.asarray(cut, np.float64))
    cuts = np.tile(np.r_[real, np.full(7 - real.size, PAD)], (X.shape[1], 1))
    binned = bin_matrix(X, cuts)
    assert (binned[np.isnan(X)] == 8).all()
    present = ~np.isnan(X)
    for b in range(7):
        assert np.array_equal((binned <= b)[present], (cuts[:, b] > X)[present])


@st.composite
def site_histograms(draw: st.DrawFn) -> tuple[np.ndarray, ...]:
    n = draw(st.integers(0, 60))
    n_f, max_bin, level = draw(st.integers(1, 4)), draw(st.integers(2, 9)), draw(st.integers(0, 3))
    binned = draw(hnp.arrays(np.uint16, (n, n_f), elements=st.integers(0, max_bin)))
    # dyadic gradients: sums are exact in any order, so "add up" means "equal"
    g = draw(hnp.arrays(np.float64, n, elements=st.integers(-64, 64).map(lambda v: v / 8)))
    h = draw(hnp.arrays(np.float64, n, elements=st.integers(0, 64).map(lambda v: v / 16)))
    first = 2**level - 1
    nodes = draw(hnp.arrays(np.int64, n, elements=st.integers(first - 1, 2 * first)))
    nodes[nodes < first] = -1
    owner = draw(hnp.arrays(np.int64, n, elements=st.integers(0, 3)))
    return binned, g, h, nodes, np.array([level, max_bin]), owner


@given(site_histograms())
def test_site_histograms_add_up_to_the_pooled_histogram(case: tuple[np.ndarray, ...]) -> None:
    binned, g, h, nodes, (level, max_bin), owner = case
    pooled = level_histograms(binned, g, h, nodes, int(level), int(max_bin))
    summed = sum(level_histograms(binned[owner == s], g[owner == s], h[owner == s],
                                  nodes[owner == s], int(level), int(max_bin)) for s in range(4))
    assert pooled.shape == (2**level, binned.shape[1], max_bin + 1, 2)
    assert np.array_equal(summed, pooled)
    inside = nodes >= 0
    assert np.allclose(pooled[..., 0].sum(axis=(0, 2)), g[inside].sum())


@given(site_histograms())
def test_left_children_and_parents_give_the_full_level(case: tuple[np.ndarray, ...]) -> None:
    binned, g, h, nodes, (level, max_bin), _ = case
    level = max(int(level), 1)
    first = 2**level - 1
    nodes = np.where(nodes >= 0, first + (nodes % 2**level), -1)
    parents = np.where(nodes >= 0, (nodes - 1) // 2, -1)
    parent_hist = level_histograms(binned, g, h, parents, level - 1, int(max_bin))
    left = level_histograms(binned, g, h, nodes, level, int(max_bin), left_only=True)
    assert left.shape[0] == 2 ** (level - 1)
    full = level_histograms(binned, g, h, nodes, level, int(max_bin))
    assert np.array_equal(with_siblings(left, parent_hist), full)


def test_subtraction_noise_is_an_empty_bin() -> None:
    parent = np.array([[[[0.1 + 0.2, 0.3 + 0.6]]]])
    left = np.array([[[[0.3, 0.9]]]])
    assert with_siblings(left, parent)[1].tolist() == [[[0.0, 0.0]]]
    with pytest.raises(ValidationError, match="do not match"):
        with_siblings(left, np.zeros((2, 1, 1, 2)))


def test_gradients_are_xgboosts() -> None:
    g, h = grad_hess(np.array([1.0, 0.0]), np.array([0.0, np.log(3)]), "binary:logistic")
    assert np.allclose(g, [-0.5, 0.75]) and np.allclose(h, [0.25, 0.1875])
    g, h = grad_hess(np.array([2.0]), np.array([0.5]), "reg:squarederror")
    assert list(g) == [-1.5] and list(h) == [1.0]


def _sites(seed: int, n_sites: int, regression: bool = False) -> list[tuple[np.ndarray, ...]]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(400, 5))
    X[rng.random(X.shape) < 0.1] = np.nan
    signal = np.nan_to_num(X[:, 0]) - np.nan_to_num(X[:, 1]) * np.nan_to_num(X[:, 2])
    y = np.round(3 * signal) if regression else (signal + 0.3 * rng.normal(size=400) > 0) * 1.0
    owner = rng.integers(0, n_sites, size=400)
    return [(X[owner == s], y[owner == s]) for s in range(n_sites)]


@pytest.mark.parametrize(("objective", "base"), [("binary:logistic", 0.5),
                                                  ("reg:squarederror", 0.0)])
@pytest.mark.parametrize("subtract", [False, True], ids=["full", "left-only"])
@given(seed=st.integers(0, 2**16), depth=st.integers(1, 5))
def test_tree_from_summed_site_histograms_is_the_pooled_tree(objective: str, base: float,
                                                            subtract: bool, seed: int,
                                                            depth: int) -> None:
    # base 0.5 / 0.0 makes every gradient dyadic (+-0.5 and 0.25; minus an integer label, 1):
    # the first tree's sums are exact in any order, so the trees must be identical.
    o = tree_options(objective=objective, base_score=base, n_trees=1, max_depth=depth,
                     max_bin=16, sketch_bins=256, min_child_weight=0.5)
    sites = _sites(seed, 4, regression=objective == "reg:squarederror")
    pooled = (np.concatenate([s[0] for s in sites]), np.concatenate([s[1] for s in sites]))
    federated = fit_federated(sites, o, subtract=subtract)
    alone = fit_federated([pooled], o)
    for name, a in federated.to_arrays().items():
        assert np.array_equal(a, alone.to_arrays()[name]), name
    assert federated.complete_trees() == 1 and (federated.status == SPLIT).any()


def test_route_rows_follows_splits_and_drops_rows_at_leaves() -> None:
    o = tree_options(n_trees=1, max_depth=3, max_bin=4)
    ens = Ensemble.empty(o, np.array([[1.0, 2.0, 3.0]]), 0.5)
    status = ens.status[0].copy()
    status[[0, 1]] = SPLIT
    status[2] = LEAF
    status[[3, 4]] = OPEN
    ens = ens.replace_tree(0, status=status, feature=np.r_[0, 0, -np.ones(13)],
                           split_bin=np.r_[1, 0, np.zeros(13)],
                           default_left=np.r_[1, 0, np.zeros(13)])
    binned = np.array([[0], [1], [2], [4]], dtype=np.uint16)  # 4 = missing
    # root: bin <= 1 left (missing left); node 1: bin <= 0 left (missing right)
    assert list(route_rows(binned, ens, 0, 1)) == [1, 1, 2, 1]
    assert list(route_rows(binned, ens, 0, 2)) == [3, 4, -1, 4]


def test_split_search_in_node_chunks_equals_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedcare.trees import split

    o = tree_options(n_trees=2, max_depth=5, max_bin=16, sketch_bins=256)
    whole = fit_federated(_sites(5, 3), o)
    monkeypatch.setattr(split, "_CHUNK", 1)  # one node per chunk
    chunked = fit_federated(_sites(5, 3), o)
    for name, a in whole.to_arrays().items():
        assert np.array_equal(a, chunked.to_arrays()[name]), name


def test_histograms_refuse_a_node_off_the_level() -> None:
    rng = np.random.default_rng(2)
    binned = rng.integers(0, 9, size=(50, 3)).astype(np.uint16)
    g, h = rng.integers(-8, 8, 50) / 4, rng.integers(0, 8, 50) / 4
    nodes = rng.integers(2, 7, 50)
    nodes[nodes == 2] = -1
    assert level_histograms(binned, g, h, nodes, 2, 8).shape == (4, 3, 9, 2)
    with pytest.raises(ValueError, match="not at level 3"):
        level_histograms(binned, g, h, nodes, 3, 8)
    with pytest.raises(ValueError, match="above max_bin = 7"):
        level_histograms(binned, g, h, nodes, 2, 7)


def test_histograms_for_another_step_are_refused() -> None:
    from fedcare.core.errors import ProtocolError
    from fedcare.trees.split import grow_level

    o = tree_options(n_trees=2, max_depth=2, max_bin=4)
    ens = Ensemble.empty(o, np.zeros((3, 3)), 0.5)
    root = np.zeros((1, 3, 5, 2))
    root[0, :, 0] = [-1.0, 2.0]
    with pytest.raises(ProtocolError, match=r"tree 1 level 0 arrived.*\(0, 0\)"):
        grow_level(ens, 1, 0, root, o)
    with pytest.raises(ValidationError, match="must be \\(1, 3, 5, 2\\)"):
        grow_level(ens, 0, 0, np.zeros((2, 3, 5, 2)), o)
    with pytest.raises(ValidationError, match="do not describe"):
        grow_level(ens, 0, 0, root, tree_options(n_trees=2, max_depth=3, max_bin=4))
    grown = grow_level(ens, 0, 0, root, o)  # all rows in one bin: the root is a leaf
    assert grown.next_step() == (1, 0) and grown.weight[0, 0] == np.float32(0.3 * 1 / 3)
    with pytest.raises(ProtocolError):
        grow_level(grown, 0, 0, root, o)  # a duplicate
