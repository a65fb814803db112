"""Optional MLflow tracking (issue 14, item 15): a simulated study with ``[tracking]
mlflow_uri`` logs per-round and per-site metrics, the baselines and the run's files (the final
model among them) to a local MLflow file store. Skipped when MLflow is not installed (CI
installs it with the ``test`` extra)."""

from __future__ import annotations

from pathlib import Path

import pytest

import fedcare
from fedcare.config import content_hash, parse_config
from fedcare.core.errors import ConfigError

STUDY = {"study": {"name": "tracked", "rounds": 2},
         "data": {"source": "synthetic", "sites": 2, "rows_per_site": 120, "n_features": 5},
         "baselines": {"local": True, "centralized": False}, "run": {"workers": 1}}


def test_a_study_logs_its_rounds_sites_and_model_to_mlflow(tmp_path: Path) -> None:
    mlflow = pytest.importorskip("mlflow")
    store = f"file:{tmp_path / 'mlruns'}"
    cfg = {**STUDY, "tracking": {"mlflow_uri": store, "experiment": "first-hour"}}

    history = fedcare.simulate(cfg, output_dir=tmp_path / "out")

    client = mlflow.MlflowClient(tracking_uri=store)
    run = client.get_run(history.meta["mlflow_run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "first-hour"
    assert run.data.params["strategy.name"] == "fedavg"
    assert run.data.params["study.rounds"] == "2"
    for key in ("global/accuracy", "site/site-1/accuracy", "site/site-2/accuracy"):
        steps = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in steps] == [1, 2], key
        recorded = [r.global_metrics if key.startswith("global") else
                    r.site_metrics[key.split("/")[1]] for r in history.rounds]
        assert [m.value for m in steps] == pytest.approx(
            [r["accuracy"] for r in recorded])
    assert run.data.metrics["final/global/accuracy"] == pytest.approx(
        history.final["global_metrics"]["accuracy"])
    assert "local/site/site-1/accuracy" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model.safetensors", "history.json", "report.html"} <= artifacts
    assert run.info.status == "FINISHED"


def test_tracking_without_an_output_folder_logs_the_model_too(tmp_path: Path) -> None:
    mlflow = pytest.importorskip("mlflow")
    store = f"file:{tmp_path / 'mlruns'}"
    history = fedcare.simulate({**STUDY, "tracking": {"mlflow_uri": store}})
    client = mlflow.MlflowClient(tracking_uri=store)
    artifacts = {a.path for a in client.list_artifacts(history.meta["mlflow_run_id"])}
    assert {"model.safetensors", "history.json"} <= artifacts


def test_tracking_without_mlflow_is_refused_before_training(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match=r"fedcare\[tracking\]"):
        fedcare.simulate({**STUDY, "tracking": {"mlflow_uri": "file:./never"}})


def test_tracking_at_its_default_leaves_the_content_hash_unchanged() -> None:
    plain = parse_config(STUDY)
    tracked = parse_config({**STUDY, "tracking": {}})
    assert content_hash(plain) == content_hash(tracked)
