"""The checks every registered model's learner must pass, built the way a study builds it
(:func:`fedcare.engine.learner_factory.make_learner`): a model added to the registry is tested
here the moment it registers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedcare.config import parse_config
from fedcare.core.dataset import TaskType
from fedcare.core.errors import ValidationError
from fedcare.core.learning import Learner
from fedcare.core.messages import TrainConfig
from fedcare.core.params import Parameters
from fedcare.engine.learner_factory import ModelShape, make_learner
from fedcare.learners.options import all_models

MODELS = list(all_models())
#: A small per-example input of the kind each model declares it takes.
SHAPES = {"flat (n, features)": (6,), "image (n, channels, height, width)": (1, 8, 8),
          "sequence (n, time, features)": (5, 3),
          "tabular (n, features) or sequence (n, time, features)": (6,)}
SMALL = {"mlp": {"hidden": [8]}, "cnn": {"channels": [4]}, "resnet": {"channels": [4, 8]},
         "lstm": {"hidden": 8},
         "gru": {"hidden": 8}, "transformer": {"d_model": 8, "heads": 2, "layers": 1},
         "xgboost": {"n_trees": 2, "max_depth": 2, "max_bin": 8},
         # The study's own module (examples/custom_model): 6 features + 1 intercept, 1 output;
         # it runs in the sandbox, so these checks also hold for what the sandbox returns.
         "custom": {"source": (Path(__file__).parents[2] / "examples" / "custom_model" /
                               "model.py").read_text(), "params": 7,
                    "cpu_seconds": 10, "wall_seconds": 30, "memory_mb": 1024}}


def _study(name: str, **sections: object) -> dict[str, object]:
    """A study of model ``name`` (with the strategy it declares it needs, if any)."""
    raw: dict[str, object] = {"data": {"source": "builtin"},
                              "model": {"name": name, **SMALL.get(name, {})}, **sections}
    strategy = all_models()[name].capabilities.strategy
    if strategy is not None:
        raw["strategy"] = {"name": strategy}
    return raw


def _learner(name: str, seed: int = 0) -> tuple[Learner, tuple[int, ...]]:
    shape = SHAPES[all_models()[name].capabilities.input]
    cfg = parse_config(_study(name, study={"seed": seed}))
    return make_learner(cfg, ModelShape(shape, TaskType.BINARY, 2)), shape


def _data(shape: tuple[int, ...], n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, *shape)).astype(np.float32)
    y = (x.reshape(n, -1)[:, 0] > 0).astype(np.int64)
    return x, y


TRAIN = TrainConfig(local_epochs=2, batch_size=8, lr=0.05)


@pytest.mark.parametrize("name", MODELS)
def test_initial_weights_depend_only_on_the_seed(name: str) -> None:
    a, _ = _learner(name, seed=3)
    b, _ = _learner(name, seed=3)
    pa, pb = a.initial_parameters(), b.initial_parameters()
    assert pa.spec == pb.spec
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k])


@pytest.mark.parametrize("name", MODELS)
def test_fit_is_deterministic_keeps_the_layout_and_leaves_its_input_alone(name: str) -> None:
    learner, shape = _learner(name)
    x, y = _data(shape)
    start = learner.initial_parameters()
    before = {k: v.copy() for k, v in start.items()}
    one = learner.fit(start, x, y, TRAIN, seed=7)
    two = learner.fit(start, x, y, TRAIN, seed=7)
    for k in start:
        np.testing.assert_array_equal(start[k], before[k])  # the global model is not touched
        np.testing.assert_array_equal(one.parameters[k], two.parameters[k])
    assert one.parameters.spec == start.spec
    assert one.num_examples == len(x) and one.num_steps >= 1
    assert any(not np.array_equal(one.parameters[k], start[k]) for k in start), "it trained"


@pytest.mark.parametrize("name", MODELS)
def test_evaluation_reports_finite_metrics(name: str) -> None:
    learner, shape = _learner(name)
    x, y = _data(shape)
    metrics = learner.evaluate(learner.initial_parameters(), x, y)
    assert metrics and all(np.isfinite(v) for v in metrics.values())


@pytest.mark.parametrize("name", MODELS)
def test_parameters_of_another_layout_are_refused(name: str) -> None:
    learner, shape = _learner(name)
    x, y = _data(shape)
    wrong = Parameters({"not_a_layer": np.zeros(3, np.float32)})
    with pytest.raises(ValidationError):
        learner.fit(wrong, x, y, TRAIN, seed=0)


@pytest.mark.parametrize("name", MODELS)
def test_dp_sgd_is_allowed_exactly_when_the_model_declares_it(name: str) -> None:
    from fedcare.core.errors import ConfigError

    raw = _study(name, privacy={"mode": "dp_sgd", "noise_multiplier": 1.0})
    raw["data"] = {"source": "builtin", "standardize": False}
    caps = all_models()[name].capabilities
    if caps.dp_sgd:
        parse_config(raw)
    elif caps.no_dp is not None:  # a model refusing DP says so, whatever the mode
        with pytest.raises(ConfigError, match="differential privacy is not supported for"):
            parse_config(raw)
    else:
        with pytest.raises(ConfigError, match=r"dp_sgd needs model\.name"):
            parse_config(raw)


def test_every_model_is_in_the_config_reference_with_its_keys() -> None:
    from fedcare.config import describe_keys

    rows = {key: desc for key, _, desc in describe_keys()}
    for name, cls in all_models().items():
        assert name in rows["model.name"]
        for key in cls.model_fields:
            assert f"model.{key}" in rows
