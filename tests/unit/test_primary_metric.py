"""Choosing the primary metric, with the site's prevalence and the trivial prediction's score
beside the model's (issue 14, item 8): an accuracy of 0.95 on a 5 % outcome must not look
good."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as sk

from fedcare.config import content_hash, parse_config
from fedcare.core.dataset import TaskType
from fedcare.core.errors import ConfigError
from fedcare.learners.metrics import PRIMARY_METRICS, primary_metric, task_metrics
from fedcare.sim.runner import simulate


def test_binary_metrics_match_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(200) < 0.3).astype(float)
    logits = rng.normal(size=(200, 1)) + 1.5 * (y[:, None] - 0.3)
    prob = 1 / (1 + np.exp(-logits[:, 0]))
    pred = (logits[:, 0] > 0).astype(int)

    m = task_metrics(TaskType.BINARY, logits, y)

    assert m["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(y, pred))
    assert m["f1"] == pytest.approx(sk.f1_score(y, pred))
    assert m["brier"] == pytest.approx(sk.brier_score_loss(y, prob))
    assert m["auc"] == pytest.approx(sk.roc_auc_score(y, logits[:, 0]))
    assert m["prevalence"] == pytest.approx(y.mean())


def test_multiclass_and_regression_metrics_match_scikit_learn() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 150)
    logits = rng.normal(size=(150, 3)) + np.eye(3)[labels]
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    target = rng.normal(size=80)
    out = target + rng.normal(scale=0.5, size=80)

    m = task_metrics(TaskType.MULTICLASS, logits, labels)
    r = task_metrics(TaskType.REGRESSION, out[:, None], target)

    pred = logits.argmax(1)
    assert m["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(labels, pred))
    assert m["f1"] == pytest.approx(sk.f1_score(labels, pred, average="macro"))
    assert m["brier"] == pytest.approx(np.mean(((proba - np.eye(3)[labels]) ** 2).sum(1)))
    assert sum(m[f"class_share_{c}"] for c in range(3)) == pytest.approx(1.0)
    assert r["rmse"] == pytest.approx(np.sqrt(sk.mean_squared_error(target, out)))
    assert r["mae"] == pytest.approx(sk.mean_absolute_error(target, out))


def test_trivial_scores_on_a_rare_outcome_expose_a_useless_model() -> None:
    # 5 % prevalence; the model says "negative" for everyone: accuracy 0.95
    y = np.array([1.0] * 5 + [0.0] * 95)
    logits = np.full((100, 1), -3.0)

    m = task_metrics(TaskType.BINARY, logits, y)

    assert m["accuracy"] == pytest.approx(0.95)
    assert m["trivial_accuracy"] == pytest.approx(0.95)  # the majority class does as well
    assert m["balanced_accuracy"] == pytest.approx(0.5) == m["trivial_balanced_accuracy"]
    assert m["trivial_auc"] == 0.5
    assert m["trivial_brier"] == pytest.approx(0.05 * 0.95)
    assert m["prevalence"] == pytest.approx(0.05)
    r = task_metrics(TaskType.REGRESSION, np.zeros((4, 1)), np.array([1.0, 2.0, 3.0, 4.0]))
    assert r["trivial_mse"] == pytest.approx(1.25) and r["trivial_rmse"] == pytest.approx(
        np.sqrt(1.25))


@pytest.mark.parametrize(("task", "name"), [("regression", "auc"), ("binary", "rmse"),
                                            ("multiclass", "auc"), ("regression", "accuracy")])
def test_a_metric_of_another_task_is_refused_naming_the_allowed_values(task: str,
                                                                       name: str) -> None:
    with pytest.raises(ConfigError) as err:
        primary_metric(task, name)

    allowed = ", ".join(PRIMARY_METRICS[TaskType(task)])
    assert f"{name!r} does not apply to a {task} task; use one of {allowed}" in err.value.message


def test_config_checks_the_metric_against_a_task_it_declares() -> None:
    with pytest.raises(ConfigError, match="'auc' does not apply to a multiclass task"):
        parse_config({"study": {"primary_metric": "auc"},
                      "data": {"source": "synthetic", "classes": 3}})
    with pytest.raises(ConfigError, match=r"study\.primary_metric"):
        parse_config({"study": {"primary_metric": "r2"}, "data": {"source": "builtin"}})


def test_runner_checks_the_metric_against_the_task_it_infers_before_writing(
        tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        x = rng.normal(size=(30, 2))
        rows = "\n".join(f"{u:.3f},{v:.3f},{u + v:.3f}" for u, v in x)
        (tmp_path / f"{name}.csv").write_text("u,v,y\n" + rows + "\n")
    study = {"study": {"primary_metric": "auc", "rounds": 1},
             "data": {"source": "files", "label": "y",
                      "site": [{"name": n, "path": str(tmp_path / f"{n}.csv")}
                               for n in ("a", "b")]}}

    with pytest.raises(ConfigError, match="does not apply to a regression task"):
        simulate(study, output_dir=tmp_path / "out")

    assert not (tmp_path / "out").exists()


def test_studies_without_a_primary_metric_keep_their_content_hash() -> None:
    # hashes of these configs before study.primary_metric existed: approvals still hold
    builtin = parse_config({"data": {"source": "builtin"}})
    federated = parse_config({"data": {"source": "federation", "dataset": "b", "label": "y",
                                       "features": ["a"], "task": "regression"}})

    assert content_hash(builtin) == (
        "5214ab8456660fb1fcf118d9ddb50f6b5d896dc3bfbaa6b190b92e1be3a8ed42")
    assert content_hash(federated) == (
        "fc4874904e70767adeb77560656d789e38b071eb951e407c87006ed67845885e")
    chosen = parse_config({"study": {"primary_metric": "f1"}, "data": {"source": "builtin"}})
    assert content_hash(chosen) != content_hash(builtin)


@pytest.mark.parametrize(("name", "higher"), [("auc", True), ("brier", False)])
def test_simulation_history_and_report_lead_with_the_chosen_metric(
        tmp_path: Path, name: str, higher: bool) -> None:
    study = {"study": {"primary_metric": name, "rounds": 2},
             "data": {"source": "builtin", "sites": 3},
             "run": {"workers": 1}}

    history = simulate(study, output_dir=tmp_path).to_dict()

    assert history["primary_metric"] == name and history["higher_is_better"] is higher
    for site_metrics in history["final"]["site_metrics"].values():
        assert {name, f"trivial_{name}", "prevalence"} <= set(site_metrics)
    assert history["comparison"][0]["metric"] == name
    report = (tmp_path / "report.html").read_text()
    assert f"Primary metric</dt><dd>{name} ({'higher' if higher else 'lower'} is better)" in report
    assert "prevalence</th>" in report and f"trivial {name}</th>" in report
    assert "trivial (constant prediction)</th>" in report
    assert "%</td>" in report  # each site's prevalence as a percentage
