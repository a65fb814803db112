"""Federated XGBoost end to end in simulation: the example study, its XGBoost model file, and
the same study under secure aggregation."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest

import fedcare
from fedcare.engine.bundle import ModelBundle

xgb = pytest.importorskip("xgboost")
pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "breast_cancer_xgboost.toml"


def _study(**over: object) -> dict:
    cfg = tomllib.loads(EXAMPLE.read_text())
    cfg["run"] = {"workers": 1, "checkpoint_every": 0}
    for key, value in over.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


def _raw_test_rows(cfg: dict) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from fedcare.config import parse_config
    from fedcare.sim.sites import build_sites

    data = parse_config(cfg).data
    sites = build_sites(data.model_copy(update={"standardize": False}), cfg["study"]["seed"])
    return (np.concatenate([s.x_test for s in sites]), np.concatenate([s.y_test for s in sites]),
            list(sites[0].feature_names))


def test_the_example_study_is_close_to_pooled_and_saves_an_xgboost_model(
        tmp_path: Path) -> None:
    from sklearn.metrics import roc_auc_score

    cfg = _study()
    history = fedcare.simulate(cfg, output_dir=tmp_path / "run")
    fed = history.final["global_metrics"]["auc"]
    pooled = history.baselines["centralized"]["global_metrics"]["auc"]
    assert fed > 0.97 and fed >= pooled - 0.02, (fed, pooled)
    assert len(history.rounds) == 1 + 20 * 3
    # The XGBoost file: raw features in, the same probabilities as fedcare's own model.
    booster = xgb.Booster(model_file=str(tmp_path / "run" / "model.xgb.json"))
    x, y, names = _raw_test_rows(cfg)
    x[:5, 0] = np.nan  # missing values: the learned default direction, in both
    p_booster = booster.predict(xgb.DMatrix(x, feature_names=names))
    p_fedcare = fedcare.load_model(tmp_path / "run").predict_proba(x)[:, 1]
    np.testing.assert_allclose(p_booster, p_fedcare, atol=1e-5)
    assert roc_auc_score(y[5:], p_booster[5:]) > 0.97
    # Feature importance: in the history and the report.
    saved = json.loads((tmp_path / "run" / "history.json").read_text())
    rows = saved["feature_importance"]["features"]
    assert len(rows) == 30 and rows[0]["total_gain"] >= rows[-1]["total_gain"]
    assert sum(r["gain_share"] for r in rows) == pytest.approx(1.0)
    assert "Feature importance" in (tmp_path / "run" / "report.html").read_text()


def test_secure_aggregation_grows_the_same_trees_within_the_fixed_point_step(
        tmp_path: Path) -> None:
    small = {"model": {"n_trees": 4}, "baselines": {"local": False, "centralized": False}}
    fedcare.simulate(_study(**small), output_dir=tmp_path / "plain")
    fedcare.simulate(_study(**small, secure_aggregation={"protocol": "secagg"}),
                     output_dir=tmp_path / "secure")
    plain, secure = (ModelBundle.from_bytes((tmp_path / d / "model.safetensors").read_bytes())
                     for d in ("plain", "secure"))
    p, q = plain.parameters, secure.parameters
    # The same trees: every split (exact ties between features are broken the same way).
    for k in ("status", "feature", "split_bin", "default_left", "cuts", "phase"):
        np.testing.assert_array_equal(q[k], p[k], err_msg=k)
    # Each site's histogram entries are rounded to 2^-24 (frac_bits) before the sum: gains
    # and leaf values (lr x G / (H + lambda)) move by far less than 1e-6.
    np.testing.assert_allclose(q["gain"], p["gain"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(q["weight"], p["weight"], atol=1e-6)
    x, _, _ = _raw_test_rows(_study(**small))
    np.testing.assert_allclose(fedcare.load_model(tmp_path / "secure").predict_proba(x),
                               fedcare.load_model(tmp_path / "plain").predict_proba(x),
                               atol=1e-6)
