"""Federated XGBoost over a real hub and nodes (HTTPS, mutual TLS): sites that approved the
study by its content hash grow the same trees as the simulation of the study over the same
files - in the clear and through secure aggregation - and the hub serves the XGBoost model
file; a site with fewer training rows than bins refuses the study, naming the parameter."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import fedcare
from fedcare.config import content_hash, parse_config
from fedcare.engine.bundle import ModelBundle
from tests.integration.network import (
    FEATURES,
    RAW_DATASET,
    NetFederation,
    simulation_of,
    study_config,
)
from tests.integration.network import net_fixture as net_fixture  # the "net" fixture

xgb = pytest.importorskip("xgboost")
Net = Callable[..., NetFederation]
pytestmark = pytest.mark.slow


def _study(name: str, max_bin: int = 16, **over: object) -> dict:
    cfg = study_config(name=name, data={"dataset": RAW_DATASET, "standardize": True},
                       model={"name": "xgboost", "n_trees": 3, "max_depth": 2,
                              "max_bin": max_bin},
                       strategy={"name": "xgboost"}, **over)
    del cfg["study"]["rounds"]  # the model fixes them: 1 + 3 x 2
    return cfg


def _approve_only(fed: NetFederation, cfg: dict) -> str:
    """Each site approves exactly this study's content hash (no "any")."""
    digest = content_hash(parse_config(cfg))
    for conf in fed.node_configs.values():
        conf.write_text(conf.read_text().replace('studies = "any"', f'studies = ["{digest}"]'))
    return digest


@pytest.mark.parametrize("protocol", ["none", "secagg"])
def test_a_networked_xgboost_study_grows_the_simulated_trees(
        net: Net, protocol: str, tmp_path: Path) -> None:
    fed = net()
    cfg = _study(f"xgb-{protocol}", secure_aggregation={"protocol": protocol})
    _approve_only(fed, cfg)
    fed.start()
    st = fed.run_study(cfg, timeout=240)
    assert st["status"] == "completed", st
    history = json.loads(fed.artifact(st["study_id"], "history.json"))
    assert len(history["rounds"]) == 7
    assert history["feature_importance"]["features"][0]["feature"] in FEATURES
    net_model = ModelBundle.from_bytes(fed.artifact(st["study_id"], "model.safetensors"))
    (tmp_path / "model.xgb.json").write_bytes(fed.artifact(st["study_id"], "model.xgb.json"))
    booster = xgb.Booster(model_file=str(tmp_path / "model.xgb.json"))

    plain = {**cfg, "secure_aggregation": {"protocol": "none"}}
    sim = fedcare.simulate(simulation_of(plain, fed.tables, sorted(fed.sites)),
                           output_dir=tmp_path / "sim")
    sim_model = ModelBundle.from_bytes((tmp_path / "sim" / "model.safetensors").read_bytes())
    p, q = sim_model.parameters, net_model.parameters
    for k in ("status", "feature", "split_bin", "default_left", "cuts"):
        np.testing.assert_array_equal(q[k], p[k], err_msg=k)
    # In the clear the hub sums exactly what the simulation sums; through secure aggregation
    # each site's histogram entries are rounded to 2^-24 first.
    np.testing.assert_allclose(q["weight"], p["weight"], atol=1e-6)
    assert history["final"]["global_metrics"]["auc"] == pytest.approx(
        sim.final["global_metrics"]["auc"], abs=1e-6)
    # The XGBoost file takes the raw features and predicts as fedcare's saved model does.
    frame = __import__("pandas").read_csv(fed.tables[RAW_DATASET][fed.sites[0]])
    x = frame[FEATURES].to_numpy(np.float64)
    from fedcare.engine.predict import SavedModel

    np.testing.assert_allclose(
        booster.predict(xgb.DMatrix(x, feature_names=list(FEATURES))),
        SavedModel(net_model).predict_proba(x)[:, 1], atol=1e-5)


def test_a_site_with_fewer_rows_than_bins_refuses_the_study(net: Net) -> None:
    fed = net()
    fed.start()
    cfg = _study("xgb-bins", max_bin=500)
    st = fed.wait_study(fed.submit(cfg), timeout=120)
    assert st["status"] == "failed", st
    assert "'model.max_bin' = 500" in st["error"] and "training rows" in st["error"], st
