"""The hub's half of issue 14, items 5 and 8: the DP check at study submission (a 422 unless
``force``) and the history's primary metric taken from ``study.primary_metric``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedcare.core.errors import ConfigError
from fedcare.hub.service import HubService, NeverRevoked

FEATURES = [f"f{i}" for i in range(30)]  # breast-cancer sized: 31 logreg parameters


def _study(**extra: Any) -> dict[str, Any]:
    return {"study": {"name": "hub-first-use", "rounds": 20, **extra.pop("study", {})},
            "data": {"source": "federation", "dataset": "breast", "label": "y",
                     "features": FEATURES, "standardize": False,  # (no DP stats to clip)
                     **extra.pop("data", {})}, **extra}


DP_EPS_1 = {"privacy": {"mode": "dp_fedavg_central", "clip": 0.5, "target_epsilon": 1.0}}


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubService]:
    svc = HubService(tmp_path / "hub", revocation=NeverRevoked())
    try:
        for site in ("a", "b", "c", "d"):
            svc.hello(site, "01", "x", [{"name": "breast", "rows": 140}], "s")
        yield svc
    finally:
        svc.stop()
        svc.db.dispose()


def test_submission_of_dp_that_cannot_learn_is_refused_naming_the_remedies(
        hub: HubService) -> None:
    with pytest.raises(ConfigError) as err:  # the API maps ConfigError to 422
        hub.submit_study(_study(**DP_EPS_1))

    message = err.value.message
    assert "noise std on the averaged update" in message and "cannot learn" in message
    assert "more sites" in message and "dp_sgd" in message and "force=true" in message
    assert hub.list_studies() == []


def test_force_submits_it_anyway(hub: HubService) -> None:
    with pytest.warns(UserWarning, match="cannot learn"):
        doc = hub.submit_study(_study(**DP_EPS_1), force=True)

    assert doc["sites"] == ["a", "b", "c", "d"]


@pytest.mark.parametrize(("metric", "task", "higher"),
                         [("auc", "binary", True), ("brier", "binary", False),
                          ("rmse", "regression", False), (None, "regression", False),
                          (None, "binary", True)])
def test_the_history_primary_metric_comes_from_the_study(hub: HubService, metric: str | None,
                                                         task: str, higher: bool) -> None:
    study = _study(study={"primary_metric": metric} if metric else {}, data={"task": task})
    doc = hub.submit_study(study)

    engine, _start = hub.runner._engine(doc["study_id"], None)  # type: ignore[arg-type]

    default = "mse" if task == "regression" else "accuracy"
    assert engine.history.meta["primary_metric"] == (metric or default)
    assert engine.history.meta["higher_is_better"] is higher


def test_a_metric_of_another_task_is_refused_naming_the_allowed_ones(hub: HubService) -> None:
    with pytest.raises(ConfigError, match="'auc' does not apply to a regression task; use "
                                          "one of rmse, mse, mae"):
        hub.submit_study(_study(study={"primary_metric": "auc"}, data={"task": "regression"}))


def test_the_api_answers_422_and_force_true_overrides(hub: HubService) -> None:
    from fastapi.testclient import TestClient

    from fedcare.hub.api import create_app
    from tests.tokens import user_token

    app = create_app(hub, trust=None)  # type: ignore[arg-type]  # researcher only
    auth = {"Authorization": f"Bearer {user_token(hub)}"}
    with TestClient(app) as client:
        refused = client.post("/v1/studies", json=_study(**DP_EPS_1), headers=auth)
        with pytest.warns(UserWarning, match="cannot learn"):
            forced = client.post("/v1/studies", params={"force": "true"},
                                 json=_study(**DP_EPS_1), headers=auth)

    assert refused.status_code == 422, refused.text
    assert "cannot learn" in refused.json()["detail"]
    assert "POST /v1/studies?force=true" in refused.json()["detail"]
    assert forced.status_code == 201, forced.text
