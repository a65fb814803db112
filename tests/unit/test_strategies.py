"""Aggregation math against reference formulas (Hypothesis) and strategy behaviour."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedcare.core import ConfigError, Parameters, ValidationError
from fedcare.core.messages import TrainConfig, UpdateKind
from fedcare.strategies import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedOptOptions,
    FedProx,
    FedYogi,
    SamplingOptions,
    Scaffold,
    UpdateStack,
    weighted_average_rows,
)
from fedcare.strategies.fedopt import server_step
from fedcare.strategies.sampling import sample_sites

finite = st.floats(-1e3, 1e3, allow_nan=False, width=64)


def _stack(models: list[Parameters], weights: list[float]) -> UpdateStack:
    stack = UpdateStack(models[0].spec, capacity=len(models))
    for i, (m, w) in enumerate(zip(models, weights, strict=True)):
        stack.add(f"s{i}", m, w)
    return stack


@given(st.integers(1, 6).flatmap(lambda k: st.tuples(
    hnp.arrays(np.float64, (k, 7), elements=finite),
    st.lists(st.floats(0.1, 1e4), min_size=k, max_size=k))))
def test_weighted_average_rows_matches_reference(data: tuple[np.ndarray, list[float]]) -> None:
    stack, weights = data
    w = np.array(weights)
    expected = sum(wi * row for wi, row in zip(w, stack, strict=True)) / w.sum()
    np.testing.assert_allclose(weighted_average_rows(stack, w), expected, rtol=1e-9, atol=1e-9)


def test_weighted_average_rejects_bad_weights() -> None:
    for w in ([0.0, 0.0], [1.0, -1.0], [np.nan, 1.0]):
        with pytest.raises(ValidationError):
            weighted_average_rows(np.ones((2, 3)), np.array(w))


@given(st.lists(hnp.arrays(np.float32, (), elements=st.floats(-10, 10, width=32)),
                min_size=1, max_size=5))
def test_fedavg_handles_0d_arrays(values: list[np.ndarray]) -> None:
    models = [Parameters({"s": v}) for v in values]
    new = FedAvg().aggregate(1, models[0], _stack(models, [1.0] * len(models)), UpdateKind.FULL,
                             {})
    assert new["s"].shape == ()
    np.testing.assert_allclose(new["s"], np.mean(values), rtol=1e-5, atol=1e-5)


def test_fedavg_of_identical_models_is_that_model() -> None:
    m = Parameters({"w": np.arange(4, dtype=np.float32)})
    new = FedAvg().aggregate(1, m, _stack([m, m, m], [1, 5, 9]), UpdateKind.FULL, {})
    assert new.allclose(m, rtol=0, atol=0)


def test_delta_updates_are_added_to_the_global_model() -> None:
    g = Parameters({"w": np.ones(3, np.float32)})
    d = Parameters({"w": np.full(3, 2.0, np.float32)})
    new = FedAvg().aggregate(1, g, _stack([d], [1]), UpdateKind.DELTA, {})
    np.testing.assert_allclose(new["w"], 3.0)


def test_update_stack_refuses_double_counting_and_overflow() -> None:
    m = Parameters({"w": np.ones(2, np.float32)})
    stack = UpdateStack(m.spec, capacity=1)
    stack.add("a", m, 1)
    with pytest.raises(ValidationError, match="already counted"):
        stack.add("a", m, 1)
    with pytest.raises(ValidationError):
        stack.add("b", m, 1)


@pytest.mark.parametrize("cls, rule", [(FedAdam, "adam"), (FedYogi, "yogi"),
                                       (FedAdagrad, "adagrad")])
@given(x=hnp.arrays(np.float64, 5, elements=finite),
       deltas=st.lists(hnp.arrays(np.float64, 5, elements=st.floats(-5, 5)), min_size=1,
                       max_size=4))
def test_server_optimizers_match_reddi_et_al(cls: type, rule: str, x: np.ndarray,
                                             deltas: list[np.ndarray]) -> None:
    opts = FedOptOptions(server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    strategy = cls(opts)
    params = Parameters({"x": x})
    strategy.initialize(params)
    m, v = np.zeros(5), np.full(5, opts.tau ** 2)
    ref_x = x.copy()
    for sent in deltas:
        # The change the server sees is (x + delta) - x, which rounds when x is large; Yogi's
        # sign(v - delta^2) jumps where v = delta^2, so the reference takes that same change.
        delta = (params["x"] + sent) - params["x"]
        # Reference: Algorithm 2 of Reddi et al. (2021), written out independently.
        m = opts.beta1 * m + (1 - opts.beta1) * delta
        if rule == "adagrad":
            v = v + delta ** 2
        elif rule == "adam":
            v = opts.beta2 * v + (1 - opts.beta2) * delta ** 2
        else:
            v = v - (1 - opts.beta2) * delta ** 2 * np.sign(v - delta ** 2)
        ref_x = ref_x + opts.server_lr * m / (np.sqrt(v) + opts.tau)
        site = Parameters({"x": params["x"] + sent})
        params = strategy.aggregate(1, params, _stack([site], [1]), UpdateKind.FULL, {})
        np.testing.assert_allclose(params["x"], ref_x, rtol=1e-6, atol=1e-6)


def test_server_step_is_pure() -> None:
    x, m, v, d = np.ones(3), np.zeros(3), np.ones(3), np.ones(3)
    server_step(x, m, v, d, FedOptOptions(), "adam")
    assert (x == 1).all() and (m == 0).all() and (v == 1).all()


def test_fedopt_state_round_trips_through_checkpoint_arrays() -> None:
    p = Parameters({"x": np.zeros(3)})
    a = FedAdam()
    a.initialize(p)
    a.aggregate(1, p, _stack([Parameters({"x": np.ones(3)})], [1]), UpdateKind.FULL, {})
    b = FedAdam()
    b.load_state(a.state())
    s = _stack([Parameters({"x": np.full(3, 2.0)})], [1])
    np.testing.assert_array_equal(a.aggregate(2, p, s, UpdateKind.FULL, {})["x"],
                                  b.aggregate(2, p, s, UpdateKind.FULL, {})["x"])


def test_fedprox_sends_mu_to_sites() -> None:
    assert FedProx().train_config(TrainConfig()).proximal_mu == 0.01


def test_scaffold_server_update_follows_the_paper() -> None:
    x = Parameters({"w": np.zeros(2)})
    s = Scaffold(num_sites=4)
    s.initialize(x)
    ys = [Parameters({"w": np.array([1.0, 2.0])}), Parameters({"w": np.array([3.0, 2.0])})]
    dcs = {"s0": {"dc": Parameters({"w": np.array([1.0, 0.0])})},
           "s1": {"dc": Parameters({"w": np.array([3.0, 4.0])})}}
    new = s.aggregate(1, x, _stack(ys, [10, 1]), UpdateKind.FULL, dcs)
    np.testing.assert_allclose(new["w"], [2.0, 2.0])  # uniform mean, server_lr 1
    np.testing.assert_allclose(s.task_aux()["c"]["w"], [0.5 * 2.0, 0.5 * 2.0])  # |S|/N * mean


def test_scaffold_refuses_momentum() -> None:
    with pytest.raises(ConfigError, match="momentum"):
        Scaffold().train_config(TrainConfig(momentum=0.9))


@given(st.integers(1, 30), st.floats(0.01, 1.0), st.integers(1, 5), st.integers(0, 1000))
def test_sampling_respects_fraction_and_minimum(n: int, fraction: float, min_sites: int,
                                               seed: int) -> None:
    sites = [f"s{i}" for i in range(n)]
    if n < min_sites:
        with pytest.raises(ConfigError):
            sample_sites(sites, fraction, min_sites, np.random.default_rng(seed))
        return
    chosen = sample_sites(sites, fraction, min_sites, np.random.default_rng(seed))
    assert len(chosen) == len(set(chosen)) >= min(min_sites, n)
    assert chosen == sorted(chosen, key=sites.index)


def test_sampling_options_validate() -> None:
    with pytest.raises(ConfigError):
        SamplingOptions(fraction=0)
