"""The checks every registered strategy must pass (scikit-learn's ``parametrize_with_checks``
idea): a strategy added as one new module is tested here the moment it registers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fedcare.config import parse_config
from fedcare.core.dataset import TaskType
from fedcare.core.errors import ConfigError, FedcareError, ValidationError
from fedcare.core.learning import FitResult
from fedcare.core.messages import TrainConfig, UpdateKind
from fedcare.core.params import Parameters
from fedcare.core.settings import literal_values
from fedcare.learners.options import all_models
from fedcare.strategies import UpdateStack, all_strategies, build_strategy
from fedcare.strategies.base import Strategy

STRATEGIES = sorted(all_strategies())
SITES = ("a", "b", "c")


def _owner(name: str) -> str | None:
    """The model a strategy aggregates exclusively (a model declaring it as its strategy)."""
    owners = [m for m, o in all_models().items() if o.capabilities.strategy == name]
    return owners[0] if owners else None


#: Checks that do not apply to a strategy that aggregates one model's own state (xgboost):
#: each round is one step of the model's growth from the sites' sums (a round of unchanged
#: updates still advances it: the sketch round ends, a level's nodes become leaves), and the
#: sites send sums, never model differences.
STEP_STRATEGY_EXEMPT = {
    "test_no_change_in_gives_no_change_out": "every round advances the model's growth",
    "test_differences_and_full_models_give_the_same_model": "the sites send sums, not deltas",
}


def _exempt(name: str, check: str) -> None:
    if _owner(name) is not None and check in STEP_STRATEGY_EXEMPT:
        pytest.skip(f"{name} aggregates its own model's state: {STEP_STRATEGY_EXEMPT[check]}")


def _tree_model(seed: int) -> Parameters:
    """An xgboost-shaped update: the ensemble state plus random positive sums (seed 0: none)."""
    from fedcare.learners.options import model_options
    from fedcare.learners.xgboost import XGBoostLearner
    from fedcare.trees.rounds import SUMS

    options = model_options("xgboost", {"n_trees": 2, "max_depth": 2, "max_bin": 4,
                                        "sketch_bins": 16})
    state = dict(XGBoostLearner(2, TaskType.BINARY, options).initial_parameters().items())
    if seed:
        rng = np.random.default_rng(seed)
        for k in SUMS:
            state[k] = rng.uniform(0.1, 1.0, size=state[k].shape)
    return Parameters(state)


def _model(seed: int, *, scalar: bool = True, strategy: str | None = None) -> Parameters:
    if strategy is not None and _owner(strategy) is not None:
        return _tree_model(seed)
    rng = np.random.default_rng(seed)
    arrays = {"w": rng.normal(size=(3, 2)).astype(np.float32),
              "b": rng.normal(size=2).astype(np.float32)}
    if scalar:
        arrays["s"] = np.float32(rng.normal())  # a 0-d array
    return Parameters({k: np.asarray(v) for k, v in arrays.items()})


def _study(name: str, **sections: object) -> dict[str, object]:
    """A study of strategy ``name`` (with the model it aggregates exclusively, if any)."""
    raw: dict[str, object] = {"data": {"source": "builtin"}, "strategy": {"name": name},
                              **sections}
    model = _owner(name)
    if model is not None:
        raw["model"] = {"name": model}
    return raw


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
    cfg = parse_config(_study(name))
    assert cfg.strategy.name == name
    with pytest.raises(ConfigError, match=r"unknown key 'strategy\.no_such_option'"):
        parse_config({**_study(name), "strategy": {"name": name, "no_such_option": 1}})


@pytest.mark.parametrize("name", STRATEGIES)
def test_no_change_in_gives_no_change_out(name: str) -> None:
    _exempt(name, "test_no_change_in_gives_no_change_out")
    current = _model(0, strategy=name)
    strategy = _started(name, current)
    new = _aggregate(strategy, current, dict.fromkeys(SITES, current))
    for k in current:
        np.testing.assert_allclose(new[k], current[k], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", STRATEGIES)
def test_the_order_sites_answer_in_does_not_matter(name: str) -> None:
    current = _model(0, strategy=name)
    models = {s: _model(i + 1, strategy=name) for i, s in enumerate(SITES)}
    results = []
    for order in itertools.permutations(SITES):
        strategy = _started(name, current)
        results.append(_aggregate(strategy, current, {s: models[s] for s in order}))
    for other in results[1:]:
        for k in current:
            np.testing.assert_allclose(other[k], results[0][k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", STRATEGIES)
def test_differences_and_full_models_give_the_same_model(name: str) -> None:
    _exempt(name, "test_differences_and_full_models_give_the_same_model")
    current = _model(0, strategy=name)
    models = {s: _model(i + 1, strategy=name) for i, s in enumerate(SITES)}
    deltas = {s: Parameters({k: m[k] - current[k] for k in m}) for s, m in models.items()}
    full = _aggregate(_started(name, current), current, models)
    delta = _aggregate(_started(name, current), current, deltas, UpdateKind.DELTA)
    for k in current:
        np.testing.assert_allclose(delta[k], full[k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", STRATEGIES)
def test_keeps_the_layout_including_0d_arrays(name: str) -> None:
    current = _model(0, strategy=name)
    new = _aggregate(_started(name, current), current,
                     {s: _model(i + 1, strategy=name) for i, s in enumerate(SITES)})
    assert new.spec == current.spec
    if "s" in current:  # (a tree model's state has no 0-d array)
        assert new["s"].shape == ()


@pytest.mark.parametrize("name", STRATEGIES)
def test_an_empty_round_is_refused(name: str) -> None:
    current = _model(0, strategy=name)
    strategy = _started(name, current)
    with pytest.raises(ValidationError):
        strategy.aggregate(1, current, UpdateStack(current.spec, capacity=1), UpdateKind.FULL,
                           {})


@pytest.mark.parametrize("name", STRATEGIES)
def test_state_round_trips_through_a_checkpoint(name: str) -> None:
    current = _model(0, strategy=name)
    rounds = [{s: _model(10 * r + i, strategy=name) for i, s in enumerate(SITES)}
              for r in range(3)]
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
    current = _model(0, strategy=name)
    strategy = _started(name, current)
    expected = strategy.expected_aux(current.spec)
    sent = _site_aux(strategy, current, {"a": _model(1, strategy=name)})["a"]
    assert set(sent) == set(expected)
    for aux_name, spec in expected.items():
        spec.validate(sent[aux_name], what=aux_name)


@pytest.mark.parametrize("name", STRATEGIES)
def test_secure_aggregation_is_allowed_exactly_when_it_aggregates_a_sum(name: str) -> None:
    raw = _study(name, secure_aggregation={"protocol": "secagg"})
    if all_strategies()[name].capabilities.aggregates_a_sum:
        parse_config(raw)
    else:
        with pytest.raises(ConfigError, match="secure aggregation hides"):
            parse_config(raw)


@pytest.mark.parametrize("name", STRATEGIES)
def test_dp_fedavg_is_allowed_exactly_when_it_declares_site_level_dp(name: str) -> None:
    raw = _study(name, privacy={"mode": "dp_fedavg_central", "noise_multiplier": 1.0})
    # DP feature statistics would need data.stats_clip
    raw["data"] = {"source": "builtin", "standardize": False}
    if all_strategies()[name].capabilities.site_level_dp:
        parse_config(raw)
    else:  # (a model that refuses DP altogether says so instead)
        with pytest.raises(ConfigError, match=r"cannot be combined with strategy|differential "
                           r"privacy is not supported for"):
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
        _model(0, strategy=name), History("s"), secure=_Secure())  # type: ignore[arg-type]
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
