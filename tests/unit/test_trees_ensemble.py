"""The ensemble's arrays, its predictions, missing values and the XGBoost model file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb
from sklearn.datasets import load_breast_cancer, load_diabetes

from fedcare.core.errors import ValidationError
from fedcare.trees.ensemble import OPEN, SPLIT, UNUSED, Ensemble, initial_base_score
from fedcare.trees.options import tree_options
from fedcare.trees.simulate import fit_federated


def _four_sites(X: np.ndarray, y: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    owner = np.random.default_rng(1).integers(0, 4, size=len(y))
    return [(X[owner == s], y[owner == s]) for s in range(4)]


@pytest.fixture(scope="module")
def cancer() -> tuple[np.ndarray, np.ndarray, Ensemble]:
    X, y = load_breast_cancer(return_X_y=True)
    X = X.copy()
    rng = np.random.default_rng(0)
    X[rng.random(X.shape) < 0.05] = np.nan
    o = tree_options(n_trees=20, max_depth=4, max_bin=32, sketch_bins=1024)
    return X, y.astype(np.float64), fit_federated(_four_sites(X, y), o)


def test_exported_model_loads_in_xgboost_and_predicts_the_same(
        cancer: tuple[np.ndarray, np.ndarray, Ensemble], tmp_path: Path) -> None:
    X, _, ens = cancer
    path = tmp_path / "model.json"
    path.write_bytes(ens.to_xgboost_json())
    booster = xgb.Booster(model_file=str(path))
    ours = ens.predict_proba(X)
    assert booster.num_boosted_rounds() == 20
    assert np.abs(booster.predict(xgb.DMatrix(X)) - ours).max() < 1e-6
    margin = booster.predict(xgb.DMatrix(X), output_margin=True)
    assert np.abs(margin - ens.predict_margin(X)).max() < 1e-5
    # and xgboost's own round trip keeps it (a model file it writes back)
    booster.save_model(str(tmp_path / "again.json"))
    again = xgb.Booster(model_file=str(tmp_path / "again.json"))
    assert np.abs(again.predict(xgb.DMatrix(X)) - ours).max() < 1e-6


def test_exported_model_carries_feature_names(
        cancer: tuple[np.ndarray, np.ndarray, Ensemble]) -> None:
    X, _, ens = cancer
    names = [f"x{i}" for i in range(30)]
    booster = xgb.Booster()
    booster.load_model(bytearray(ens.to_xgboost_json(feature_names=names)))
    assert booster.feature_names == names
    frame = xgb.DMatrix(X, feature_names=names)
    assert np.abs(booster.predict(frame) - ens.predict_proba(X)).max() < 1e-6
    with pytest.raises(ValidationError, match="2 feature names for 30"):
        ens.to_xgboost_json(feature_names=["a", "b"])


def test_feature_importance_is_xgboosts(cancer: tuple[np.ndarray, np.ndarray, Ensemble]) -> None:
    _, _, ens = cancer
    booster = xgb.Booster()
    booster.load_model(bytearray(ens.to_xgboost_json()))
    for kind in ("gain", "total_gain", "weight", "cover", "total_cover"):
        theirs = booster.get_score(importance_type=kind)
        ours = ens.feature_importance(kind)  # type: ignore[arg-type]
        expected = np.array([theirs.get(f"f{i}", 0.0) for i in range(ens.n_features)])
        assert np.allclose(ours, expected, rtol=1e-5), kind
    assert ens.feature_importance("gain").argmax() in {20, 22, 23, 27}  # worst radius/area/...


def test_regression_export_predicts_the_same(tmp_path: Path) -> None:
    X, y = load_diabetes(return_X_y=True)
    o = tree_options(objective="reg:squarederror", n_trees=10, max_depth=3, max_bin=16,
                     sketch_bins=512)
    ens = fit_federated(_four_sites(X, y), o)
    assert ens.base_score == pytest.approx(y.mean(), rel=1e-6)
    booster = xgb.Booster()
    booster.load_model(bytearray(ens.to_xgboost_json()))
    assert np.abs(booster.predict(xgb.DMatrix(X)) - ens.predict_proba(X)).max() < 1e-3


@pytest.mark.parametrize("missing_label", [0.0, 1.0])
def test_missing_values_go_the_learned_default_way(missing_label: float) -> None:
    # x > 0.5 means y = 1; rows with x missing have label `missing_label`, so the learned
    # default direction sends them to the side of the values with that label.
    rng = np.random.default_rng(3)
    x = rng.random(600)
    y = (x > 0.5).astype(np.float64)
    gone = rng.random(600) < 0.2
    x[gone], y[gone] = np.nan, missing_label
    X = x[:, None]
    o = tree_options(n_trees=3, max_depth=1, max_bin=16, sketch_bins=256)
    ens = fit_federated(_four_sites(X, y), o)
    assert ens.status[0, 0] == SPLIT
    assert ens.default_left[0, 0] == (1.0 if missing_label == 0.0 else 0.0)
    p_missing = ens.predict_proba(np.array([[np.nan]]))[0]
    assert (p_missing > 0.5) == (missing_label == 1.0)
    booster = xgb.Booster()
    booster.load_model(bytearray(ens.to_xgboost_json()))
    assert booster.predict(xgb.DMatrix(np.array([[np.nan]])))[0] == pytest.approx(p_missing)


def test_arrays_round_trip_and_are_checked(cancer: tuple[np.ndarray, np.ndarray, Ensemble]) -> None:
    X, _, ens = cancer
    o = tree_options(n_trees=20, max_depth=4, max_bin=32, sketch_bins=1024)
    arrays = ens.to_arrays()
    assert all(a.dtype == np.float64 and np.isfinite(a).all() for a in arrays.values())
    assert arrays["status"].shape == (20, 31) and arrays["cuts"].shape == (30, 31)
    back = Ensemble.from_arrays(arrays, o)
    assert np.array_equal(back.predict_margin(X), ens.predict_margin(X))
    with pytest.raises(ValidationError, match="'weight' must be"):
        Ensemble.from_arrays({**arrays, "weight": arrays["weight"][:3]}, o)
    with pytest.raises(ValidationError, match="unknown node state"):
        Ensemble.from_arrays({**arrays, "status": arrays["status"] + 7}, o)
    with pytest.raises(ValidationError, match="out of range"):
        Ensemble.from_arrays({**arrays, "split_bin": arrays["split_bin"] + 100}, o)
    with pytest.raises(ValidationError, match="sorted"):
        Ensemble.from_arrays({**arrays, "cuts": arrays["cuts"][:, ::-1]}, o)
    with pytest.raises(ValidationError, match="base_score"):
        Ensemble.from_arrays({**arrays, "base_score": np.array([1.5])}, o)
    with pytest.raises(ValidationError, match="lack"):
        Ensemble.from_arrays({"cuts": arrays["cuts"]}, o)


def test_progress_runs_tree_by_tree_and_level_by_level() -> None:
    o = tree_options(n_trees=2, max_depth=2, max_bin=4)
    ens = Ensemble.empty(o, np.zeros((3, 3)), 0.5)
    assert ens.next_step() == (0, 0) and ens.complete_trees() == 0
    status = ens.status[0].copy()
    status[0], status[1], status[2] = SPLIT, OPEN, OPEN
    assert ens.replace_tree(0, status=status).next_step() == (0, 1)
    assert (ens.status == UNUSED).all()  # replace_tree copied
    done = np.array([[3.0, 0, 0, 0, 0, 0, 0]] * 2)
    assert ens.replace_tree(0, status=done[0]).next_step() == (1, 0)
    assert Ensemble.from_arrays({**ens.to_arrays(), "status": done}, o).next_step() is None


def test_base_score_is_the_federation_label_mean() -> None:
    assert initial_base_score(357.0, 569.0, "binary:logistic") == pytest.approx(0.6274165)
    assert initial_base_score(0.0, 10.0, "binary:logistic") == pytest.approx(1e-6)
    with pytest.raises(ValidationError, match="no rows"):
        initial_base_score(0.0, 0.0, "reg:squarederror")
