"""DP-SGD in TorchLearner (real Opacus): clipping bounds the step, noise is seeded or not,
exact steps and sample rate reported, models Opacus refuses are a ConfigError."""

from __future__ import annotations

import numpy as np
import pytest

from fedcare.core.dataset import TaskType
from fedcare.core.errors import ConfigError
from fedcare.core.messages import TrainConfig
from fedcare.learners import TorchLearner
from fedcare.learners.torch_learner import DpSgdOptions, dp_sgd_sample_rate, dp_sgd_steps

SHAPES = {"logreg": (6,), "mlp": (6,), "cnn": (2, 8, 8), "resnet": (2, 8, 8), "lstm": (4, 3),
          "gru": (4, 3),
          "transformer": (6,)}


def _data(shape: tuple[int, ...] = (6,), n: int = 100, seed: int = 0
          ) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *shape)).astype(np.float32)
    y = (x.reshape(n, -1) @ rng.normal(size=int(np.prod(shape))) > 0).astype(np.int64)
    return x, y


def _learner(name: str = "logreg", dp: DpSgdOptions | None = None,
             options: dict | None = None) -> TorchLearner:
    return TorchLearner.from_zoo(name, SHAPES[name], 1, TaskType.BINARY, options or {}, 0, dp=dp)


@pytest.mark.parametrize("name", ["logreg", "mlp", "cnn", "resnet"])
def test_zoo_models_train_with_dp_sgd_and_report_the_accounting_inputs(name: str) -> None:
    learner = _learner(name, DpSgdOptions(noise_multiplier=1.0, max_grad_norm=1.0, seeded=True))
    x, y = _data(SHAPES[name], n=64)
    config = TrainConfig(local_epochs=2, batch_size=16, lr=0.05)
    res = learner.fit(learner.initial_parameters(), x, y, config, seed=3)
    assert res.num_steps == 2 * 4 == dp_sgd_steps(64, config)
    assert res.dp is not None and res.dp.sample_rate == 0.25 == dp_sgd_sample_rate(64, 16)
    assert res.dp.noise_multiplier == 1.0 and res.dp.clip == 1.0
    assert res.dp.steps == res.num_steps
    assert all(np.isfinite(a).all() for a in res.parameters.values())
    assert "loss" in learner.evaluate(res.parameters, x, y)


@pytest.mark.parametrize("name", ["lstm", "gru", "transformer"])
def test_models_opacus_refuses_are_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError, match=rf"model '{name}' cannot be trained with DP-SGD"):
        _learner(name, DpSgdOptions(1.0, 1.0))


def test_clipping_bounds_a_noiseless_step() -> None:
    """q = 1 (batch >= rows), z = 0, one SGD step: ||w' - w|| <= lr * C whatever the data."""
    learner = _learner("logreg", DpSgdOptions(noise_multiplier=0.0, max_grad_norm=0.01))
    x, y = _data(n=20)
    x *= 100  # huge per-example gradients
    start = learner.initial_parameters()
    res = learner.fit(start, x, y, TrainConfig(local_steps=1, batch_size=64, lr=10.0), seed=0)
    moved = np.linalg.norm(res.parameters.flatten(np.float64) - start.flatten(np.float64))
    assert 0 < moved <= 10.0 * 0.01 * (1 + 1e-5)
    plain = _learner("logreg").fit(start, x, y, TrainConfig(local_steps=1, batch_size=64,
                                                            lr=10.0), seed=0)
    assert np.linalg.norm(plain.parameters.flatten() - start.flatten()) > 10 * moved


def test_seeded_noise_is_reproducible_and_unseeded_is_not() -> None:
    x, y = _data(n=50)
    config = TrainConfig(local_steps=3, batch_size=10, lr=0.1)

    def run(seeded: bool, seed: int) -> np.ndarray:
        learner = _learner("logreg", DpSgdOptions(2.0, 1.0, seeded=seeded))
        return learner.fit(learner.initial_parameters(), x, y, config, seed=seed
                           ).parameters.flatten()

    np.testing.assert_array_equal(run(True, 7), run(True, 7))
    assert not np.array_equal(run(True, 7), run(True, 8))
    assert not np.array_equal(run(False, 7), run(False, 7))


def test_tiny_sample_rate_survives_empty_batches_and_still_adds_noise() -> None:
    learner = _learner("logreg", DpSgdOptions(1.0, 1.0, seeded=True))
    x, y = _data(n=100)
    start = learner.initial_parameters()
    res = learner.fit(start, x, y, TrainConfig(local_steps=5, batch_size=1, lr=0.1), seed=0)
    assert res.num_steps == 5 and res.dp is not None and res.dp.sample_rate == 0.01
    assert not res.parameters.allclose(start)


def test_fedprox_term_composes_with_dp_sgd() -> None:
    x, y = _data(n=40)
    start = _learner("logreg").initial_parameters()
    config = TrainConfig(local_steps=20, batch_size=40, lr=0.5, proximal_mu=0.0)
    far = _learner("logreg", DpSgdOptions(0.0, 1.0)).fit(start, x, y, config, seed=0)
    from dataclasses import replace

    near = _learner("logreg", DpSgdOptions(0.0, 1.0)).fit(
        start, x, y, replace(config, proximal_mu=1.5), seed=0)
    dist = [np.linalg.norm(r.parameters.flatten() - start.flatten()) for r in (far, near)]
    assert dist[1] < dist[0]


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"noise_multiplier": -1.0, "max_grad_norm": 1.0}, "privacy.noise_multiplier"),
    ({"noise_multiplier": float("nan"), "max_grad_norm": 1.0}, "privacy.noise_multiplier"),
    ({"noise_multiplier": 1.0, "max_grad_norm": 0.0}, "privacy.clip"),
    ({"noise_multiplier": 1.0, "max_grad_norm": float("inf")}, "privacy.clip"),
])
def test_dp_options_are_validated(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        DpSgdOptions(**kwargs)


def test_non_dp_learner_does_not_report_dp_metrics() -> None:
    learner = _learner("logreg")
    x, y = _data(n=30)
    res = learner.fit(learner.initial_parameters(), x, y, TrainConfig(batch_size=10), seed=0)
    assert not any(k.startswith("dp_") for k in res.metrics) and res.dp is None
