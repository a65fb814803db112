"""SklearnLinearLearner and the shared metric helpers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.datasets import load_breast_cancer
from sklearn.metrics import roc_auc_score

from fedcare.core.dataset import TaskType
from fedcare.core.errors import ConfigError, ValidationError
from fedcare.core.messages import TrainConfig
from fedcare.core.params import Parameters
from fedcare.learners import Learner, SklearnLinearLearner
from fedcare.learners.metrics import binary_auc


@pytest.fixture(scope="module")
def cancer():
    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    train, test = order[:400], order[400:]
    return x[train].astype(np.float32), y[train], x[test].astype(np.float32), y[test]


def test_fits_breast_cancer_above_90_percent(cancer):
    x, y, x_test, y_test = cancer
    learner = SklearnLinearLearner(30, TaskType.BINARY, classes=[0, 1], seed=0)
    params = learner.initial_parameters()

    for rnd in range(3):
        result = learner.fit(params, x, y, TrainConfig(lr=0.01), seed=rnd)
        params = result.parameters
    metrics = learner.evaluate(params, x_test, y_test)

    assert isinstance(learner, Learner)
    assert metrics["accuracy"] > 0.9 and metrics["auc"] > 0.95
    assert {"loss", "accuracy", "auc", "balanced_accuracy", "f1", "brier",
            "prevalence"} <= set(metrics)
    assert result.num_steps == 13 and result.num_examples == 400


def test_initial_parameters_are_zeros_with_sklearn_shapes():
    binary = SklearnLinearLearner(4, TaskType.BINARY, classes=[0, 1])
    multi = SklearnLinearLearner(4, TaskType.MULTICLASS, classes=[0, 1, 2])
    reg = SklearnLinearLearner(4, TaskType.REGRESSION)

    assert binary.initial_parameters().spec.to_json() == {
        "coef": [[1, 4], "float64"], "intercept": [[1], "float64"]}
    assert multi.initial_parameters()["coef"].shape == (3, 4)
    assert reg.initial_parameters()["coef"].shape == (4,)
    assert not binary.initial_parameters().flatten().any()


def test_fit_is_deterministic_and_follows_the_seed(cancer):
    x, y, _, _ = cancer
    learner = SklearnLinearLearner(30, TaskType.BINARY, classes=[0, 1])
    start = learner.initial_parameters()

    a = learner.fit(start, x, y, TrainConfig(), seed=1).parameters
    b = learner.fit(start, x, y, TrainConfig(), seed=1).parameters
    c = learner.fit(start, x, y, TrainConfig(), seed=2).parameters

    assert a.allclose(b, rtol=0, atol=0)
    assert not a.allclose(c, rtol=0, atol=0)


def test_local_steps_count_minibatches(cancer):
    x, y, _, _ = cancer
    learner = SklearnLinearLearner(30, TaskType.BINARY, classes=[0, 1])

    result = learner.fit(learner.initial_parameters(), x, y,
                         TrainConfig(local_steps=20, batch_size=32), seed=0)

    assert result.num_steps == 20


def test_multiclass_and_regression():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3))
    multi = SklearnLinearLearner(3, TaskType.MULTICLASS, classes=[0, 1, 2])
    labels = np.argmax(x, axis=1)
    reg = SklearnLinearLearner(3, TaskType.REGRESSION)
    target = x @ np.array([1.0, -2.0, 0.5]) + 0.3

    m = multi.fit(multi.initial_parameters(), x, labels, TrainConfig(local_epochs=5, lr=0.05),
                  seed=0)
    r = reg.fit(reg.initial_parameters(), x, target, TrainConfig(local_epochs=5, lr=0.01),
                seed=0)

    assert multi.evaluate(m.parameters, x, labels)["accuracy"] > 0.8
    reg_metrics = reg.evaluate(r.parameters, x, target)
    assert reg_metrics["mse"] < 0.05 and {"loss", "mse", "rmse", "mae"} <= set(reg_metrics)


@pytest.mark.parametrize("config", [TrainConfig(proximal_mu=0.1), TrainConfig(optimizer="adam"),
                                    TrainConfig(momentum=0.9)])
def test_unsupported_training_options_are_refused(config, cancer):
    x, y, _, _ = cancer
    learner = SklearnLinearLearner(30, TaskType.BINARY, classes=[0, 1])

    with pytest.raises(ConfigError):
        learner.fit(learner.initial_parameters(), x, y, config, seed=0)


def test_correction_is_refused_with_a_pointer_to_torch(cancer):
    x, y, _, _ = cancer
    learner = SklearnLinearLearner(30, TaskType.BINARY, classes=[0, 1])
    start = learner.initial_parameters()

    with pytest.raises(ConfigError, match="torch"):
        learner.fit(start, x, y, TrainConfig(), seed=0, correction=start)


def test_wrong_layout_is_rejected(cancer):
    x, y, _, _ = cancer
    learner = SklearnLinearLearner(30, TaskType.BINARY, classes=[0, 1])
    bad = Parameters({"coef": np.zeros((1, 29)), "intercept": np.zeros(1)})

    with pytest.raises(ValidationError):
        learner.fit(bad, x, y, TrainConfig(), seed=0)
    with pytest.raises(ValidationError):
        learner.evaluate(bad, x, y)


def test_classes_must_be_given_up_front():
    with pytest.raises(ConfigError):
        SklearnLinearLearner(3, TaskType.MULTICLASS)


@given(st.lists(st.tuples(st.integers(0, 1), st.integers(-3, 3)), min_size=2, max_size=40))
def test_binary_auc_equals_sklearn_including_ties(pairs):
    labels = np.array([p[0] for p in pairs], dtype=np.float64)
    scores = np.array([p[1] for p in pairs], dtype=np.float64) / 2
    if labels.min() == labels.max():
        return

    assert binary_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
