"""The checks every registered strategy must pass (scikit-learn's ``parametrize_with_checks``
idea): a strategy added as one new module is tested here the moment it registers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fedcare.config import parse_config
from fedcare.core.errors import ConfigError, FedcareError, ValidationError
from fedcare.core.learning import FitResult
from fedcare.core.messages import TrainConfig, UpdateKind
from fedcare.core.params import Parameters
from fedcare.core.settings import literal_values
from fedcare.strategies import UpdateStack, all_strategies, build_strategy
from fedcare.strategies.base import Strategy

STRATEGIES = sorted(all_strategies())
SITES = ("a", "b", "c")


def _model(seed: int, *, scalar: bool = True) -> Parameters:
    rng = np.random.default_rng(seed)
    arrays = {"w": rng.normal(size=(3, 2)).astype(np.float32),
              "b": rng.normal(size=2).astype(np.float32)}
    if scalar:
        arrays["s"] = np.float32(rng.normal())  # a 0-d array
    return Parameters({k: np.asarray(v) for k, v in arrays.items()})


def _strategy(name: str) -> Strategy:
    cls = all_strategies()[name]
    return build_strategy(cls.Options(), num_sites=len(SITES))


def _aggregate(strategy: Strategy, current: Parameters, models: dict[str, Parameters],
               kind: UpdateKind = UpdateKind.FULL, weights: dict[str, float] | None = None,
               round_: int = 1) -> Parameters:
    stack = UpdateStack(current.spec, capacity=len(models))
    for site, m in models.items():
        stack.add(site, m, (weights or {}).get(site, 10.0))
    aux = _site_aux(strategy, current, models)
    return strategy.aggregate(round_, current, stack, kind, aux)


def _site_aux(strategy: Strategy, current: Parameters,
              models: dict[str, Parameters]) -> dict[str, dict[str, Parameters]]:
    """What each site's half would send beside its model (e.g. SCAFFOLD's control change)."""
    out = {}
    for site, m in models.items():
        result = FitResult(m, 10, 5)
        aux, _ = strategy.site_half.after_fit(current, strategy.task_aux(), result,
                                              strategy.train_config(TrainConfig()), {})
        out[site] = aux
    return out


def _started(name: str, current: Parameters) -> Strategy:
    s = _strategy(name)
    s.initialize(current)
    return s


@pytest.mark.parametrize("name", STRATEGIES)
def test_declares_its_options_and_builds_from_them(name: str) -> None:
    cls = all_strategies()[name]
    assert cls.name == name
    assert literal_values(cls.Options.model_fields["name"].annotation) == (name,)
    strategy = _strategy(name)
    assert isinstance(strategy, cls) and strategy.name == name
    assert cls.__doc__ and cls.__doc__.strip(), "the docstring's first line is its --help text"


@pytest.mark.parametrize("name", STRATEGIES)
def test_its_section_is_accepted_by_the_study_config(name: str) -> None:
    cfg = parse_config({"data": {"source": "builtin"}, "strategy": {"name": name}})
    assert cfg.strategy.name == name
    with pytest.raises(ConfigError, match=r"unknown key 'strategy\.no_such_option'"):
        parse_config({"data": {"source": "builtin"},
                      "strategy": {"name": name, "no_such_option": 1}})


@pytest.mark.parametrize("name", STRATEGIES)
def test_no_change_in_gives_no_change_out(name: str) -> None:
    current = _model(0)
    strategy = _started(name, current)
    new = _aggregate(strategy, current, dict.fromkeys(SITES, current))
    for k in current:
        np.testing.assert_allclose(new[k], current[k], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", STRATEGIES)
def test_the_order_sites_answer_in_does_not_matter(name: str) -> None:
    current = _model(0)
    models = {s: _model(i + 1) for i, s in enumerate(SITES)}
    results = []
    for order in itertools.permutations(SITES):
        strategy = _started(name, current)
        results.append(_aggregate(strategy, current, {s: models[s] for s in order}))
    for other in results[1:]:
        for k in current:
            np.testing.assert_allclose(other[k], results[0][k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", STRATEGIES)
def test_differences_and_full_models_give_the_same_model(name: str) -> None:
    current = _model(0)
    models = {s: _model(i + 1) for i, s in enumerate(SITES)}
    deltas = {s: Parameters({k: m[k] - current[k] for k in m}) for s, m in models.items()}
    full = _aggregate(_started(name, current), current, models)
    delta = _aggregate(_started(name, current), current, deltas, UpdateKind.DELTA)
    for k in current:
        np.testing.assert_allclose(delta[k], full[k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", STRATEGIES)
def test_keeps_the_layout_including_0d_arrays(name: str) -> None:
    current = _model(0)
    new = _aggregate(_started(name, current), current,
                     {s: _model(i + 1) for i, s in enumerate(SITES)})
    assert new.spec == current.spec
    assert new["s"].shape == ()


@pytest.mark.parametrize("name", STRATEGIES)
def test_an_empty_round_is_refused(name: str) -> None:
    current = _model(0)
    strategy = _started(name, current)
    with pytest.raises(ValidationError):
        strategy.aggregate(1, current, UpdateStack(current.spec, capacity=1), UpdateKind.FULL,
                           {})


@pytest.mark.parametrize("name", STRATEGIES)
def test_state_round_trips_through_a_checkpoint(name: str) -> None:
    current = _model(0)
    rounds = [{s: _model(10 * r + i) for i, s in enumerate(SITES)} for r in range(3)]
    straight = _started(name, current)
    model = _aggregate(straight, current, rounds[0])
    saved = {k: np.array(v) for k, v in straight.state().items()}
    assert bool(saved) == all_strategies()[name].capabilities.server_state
    resumed = _strategy(name)
    resumed.initialize(model)
    resumed.load_state(saved)
    for r, models in enumerate(rounds[1:], start=2):
        a = _aggregate(straight, model, models, round_=r)
        b = _aggregate(resumed, model, models, round_=r)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
        model = a


@pytest.mark.parametrize("name", STRATEGIES)
def test_what_its_site_half_sends_is_what_it_expects(name: str) -> None:
    current = _model(0)
    strategy = _started(name, current)
    expected = strategy.expected_aux(current.spec)
    sent = _site_aux(strategy, current, {"a": _model(1)})["a"]
    assert set(sent) == set(expected)
    for aux_name, spec in expected.items():
        spec.validate(sent[aux_name], what=aux_name)


@pytest.mark.parametrize("name", STRATEGIES)
def test_secure_aggregation_is_allowed_exactly_when_it_aggregates_a_sum(name: str) -> None:
    raw = {"data": {"source": "builtin"}, "strategy": {"name": name},
           "secure_aggregation": {"protocol": "secagg"}}
    if all_strategies()[name].capabilities.aggregates_a_sum:
        parse_config(raw)
    else:
        with pytest.raises(ConfigError, match="secure aggregation hides"):
            parse_config(raw)


@pytest.mark.parametrize("name", STRATEGIES)
def test_dp_fedavg_is_allowed_exactly_when_it_declares_site_level_dp(name: str) -> None:
    raw = {"data": {"source": "builtin"}, "strategy": {"name": name},
           "privacy": {"mode": "dp_fedavg_central", "noise_multiplier": 1.0}}
    raw["data"]["standardize"] = False  # DP feature statistics would need data.stats_clip
    if all_strategies()[name].capabilities.site_level_dp:
        parse_config(raw)
    else:
        with pytest.raises(ConfigError, match="cannot be combined with strategy"):
            parse_config(raw)


@pytest.mark.parametrize("name", STRATEGIES)
def test_the_engine_refuses_a_sum_only_round_for_a_strategy_that_needs_each_update(
        name: str) -> None:
    from fedcare.engine.history import History
    from fedcare.engine.round_engine import EngineSettings, RoundEngine
    from fedcare.transport.inmemory import InMemoryTransport

    strategy = _strategy(name)

    class _Secure:  # stands for the secure aggregator: only its presence matters here
        pass

    build = lambda: RoundEngine(  # noqa: E731
        EngineSettings("s", 0, TrainConfig()), strategy, InMemoryTransport({}), list(SITES),
        _model(0), History("s"), secure=_Secure())  # type: ignore[arg-type]
    if strategy.capabilities.aggregates_a_sum:
        build()
    else:
        with pytest.raises(FedcareError, match="cannot run under secure aggregation"):
            build()


def test_every_strategy_is_in_the_config_reference_with_its_keys() -> None:
    from fedcare.config import describe_keys

    rows = {key: desc for key, _, desc in describe_keys()}
    for name, cls in all_strategies().items():
        assert name in rows["strategy.name"]
        for key in cls.Options.model_fields:
            assert f"strategy.{key}" in rows
