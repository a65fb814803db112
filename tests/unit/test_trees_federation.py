"""Four sites in one process, pure numpy: the federated trees score as XGBoost on the pooled
rows (issue 15: within 0.5 AUC point), also when every sum is quantized to integers as secure
aggregation needs."""

from __future__ import annotations

import re

import numpy as np
import pytest
import xgboost as xgb
from sklearn.datasets import load_breast_cancer
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from fedcare.core.errors import ConfigError
from fedcare.trees.options import TreeOptions, tree_options
from fedcare.trees.simulate import Trace, fit_federated

OPTIONS = tree_options(n_trees=50, max_depth=4, learning_rate=0.3, reg_lambda=1.0,
                       max_bin=32, sketch_bins=4096)


def _dirichlet_sites(X: np.ndarray, y: np.ndarray, n_sites: int, alpha: float,
                     seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Label-skewed sites: each class is dealt to the sites in Dirichlet(alpha) shares."""
    rng = np.random.default_rng(seed)
    owner = np.empty(len(y), dtype=np.int64)
    for label in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == label))
        shares = rng.dirichlet(np.full(n_sites, alpha))
        owner[rows] = np.minimum(np.searchsorted(np.cumsum(shares), rng.random(rows.size)),
                                 n_sites - 1)
    return [(X[owner == s], y[owner == s]) for s in range(n_sites)]


def _pooled_xgboost_auc(o: TreeOptions, X: np.ndarray, y: np.ndarray, Xt: np.ndarray,
                        yt: np.ndarray) -> float:
    params = {"objective": o.objective, "tree_method": "hist", "max_bin": o.max_bin,
              "eta": o.learning_rate, "max_depth": o.max_depth, "lambda": o.reg_lambda,
              "gamma": o.gamma, "min_child_weight": o.min_child_weight, "nthread": 1}
    booster = xgb.train(params, xgb.DMatrix(X, label=y), num_boost_round=o.n_trees)
    return float(roc_auc_score(yt, booster.predict(xgb.DMatrix(Xt))))


@pytest.fixture(scope="module")
def cancer() -> tuple[np.ndarray, ...]:
    X, y = load_breast_cancer(return_X_y=True)
    return tuple(train_test_split(X, y.astype(np.float64), test_size=0.3, random_state=0,
                                  stratify=y))


def _quantized(a: np.ndarray) -> np.ndarray:
    """Fixed point with 2^-20 steps, as secure aggregation's integer grid carries a sum."""
    return np.round(a * 2.0**20) / 2.0**20


@pytest.mark.parametrize(("encode", "subtract", "grid"), [
    (None, False, "ranges"), (_quantized, False, "ranges"), (_quantized, True, "moments")],
    ids=["clear", "fixed-point", "fixed-point-left-only-sums-only"])
def test_four_sites_match_pooled_xgboost_on_breast_cancer(cancer: tuple[np.ndarray, ...],
                                                          encode: object, subtract: bool,
                                                          grid: str) -> None:
    X, Xt, y, yt = cancer
    sites = _dirichlet_sites(X, y, 4, alpha=1.0, seed=7)
    assert min(len(s[1]) for s in sites) >= OPTIONS.max_bin
    assert max(abs(s[1].mean() - y.mean()) for s in sites) > 0.1  # really skewed
    traffic = Trace()
    ens = fit_federated(sites, OPTIONS, encode=encode, trace=traffic,  # type: ignore[arg-type]
                        subtract=subtract, grid=grid)  # type: ignore[arg-type]
    federated = roc_auc_score(yt, ens.predict_proba(Xt))
    pooled = _pooled_xgboost_auc(OPTIONS, X, y, Xt, yt)
    assert federated >= pooled - 0.005, (federated, pooled)
    assert ens.complete_trees() == 50
    assert traffic.rounds <= 2 + 50 * OPTIONS.max_depth
    assert max(traffic.histograms) == (4 if subtract else 8) * 30 * 33 * 2


def test_a_site_with_fewer_rows_than_bins_is_refused(cancer: tuple[np.ndarray, ...]) -> None:
    X, _, y, _ = cancer
    with pytest.raises(ConfigError, match="rows of site '1'"):
        fit_federated([(X[:300], y[:300]), (X[300:310], y[300:310])], OPTIONS)


def _splits(dump: str) -> list[tuple[str, bool]]:
    """(feature, missing goes left) of each split of a text dump, in node order."""
    found = re.findall(r"\[(f\d+)<[^\]]+\] yes=(\d+),no=\d+,missing=(\d+)", dump)
    return [(f, yes == missing) for f, yes, missing in found]


@pytest.mark.parametrize("objective", ["binary:logistic", "reg:squarederror"])
@pytest.mark.parametrize("seed", [0, 1])
def test_same_candidates_give_xgboosts_pooled_model(objective: str, seed: int) -> None:
    # Features with 10 distinct values: XGBoost's hist and the federated sketch both cut
    # between every pair of neighbouring values, so both search the same splits; the
    # federated ensemble is then XGBoost's own (same splits, default directions, leaves).
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 10, size=(2000, 6)).astype(np.float64)
    X[rng.random(X.shape) < 0.1] = np.nan
    signal = np.nan_to_num(X[:, 0], nan=7) - np.nan_to_num(X[:, 1], nan=2) + 0.5 * X[:, 2]
    signal = np.nan_to_num(signal) + 2 * rng.normal(size=2000)
    y = (signal > 0).astype(np.float64) if objective == "binary:logistic" else signal
    o = tree_options(objective=objective, n_trees=10, max_depth=3, max_bin=16,
                     sketch_bins=1024, gamma=0.1)
    owner = rng.integers(0, 4, size=2000)
    ens = fit_federated([(X[owner == s], y[owner == s]) for s in range(4)], o)
    params = {"objective": objective, "tree_method": "hist", "max_bin": 16, "eta": 0.3,
              "max_depth": 3, "lambda": 1.0, "gamma": 0.1, "min_child_weight": 1.0,
              "nthread": 1}
    booster = xgb.train(params, xgb.DMatrix(X, label=y), num_boost_round=10)
    theirs = booster.get_dump()
    ours = xgb.Booster(model_file=bytearray(ens.to_xgboost_json())).get_dump()
    assert [_splits(t) for t in ours] == [_splits(t) for t in theirs]
    tol = 1e-6 if objective == "binary:logistic" else 1e-4
    assert np.abs(booster.predict(xgb.DMatrix(X)) - ens.predict_proba(X)).max() < tol
