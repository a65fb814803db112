"""The hub's aggregation steps (engine.aggregation): which step a study gets, what each puts
into the strategy's stack, central noise around either sum, and the secure aggregator driven
by an exchange function alone (no engine)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from fedcare.config import parse_config
from fedcare.core.messages import Task, TaskKind, TrainConfig, Update, UpdateKind
from fedcare.core.params import Parameters
from fedcare.engine.aggregation import (
    CentralNoise,
    PlainSum,
    RoundFailed,
    RoundInputs,
    SecureSum,
    hub_aggregation,
)
from fedcare.engine.history import RoundRecord
from fedcare.engine.privacy import hub_privacy
from fedcare.engine.secure import SecureAggregator, SecureSettings, SecureSite
from fedcare.engine.secure import SecureSum as SecureResult
from fedcare.strategies.aggregate import UpdateStack

G = Parameters({"w": np.zeros(3, np.float32)})
STUDY: dict[str, Any] = {"study": {"name": "agg", "rounds": 1},
                         "data": {"source": "builtin", "sites": 3, "standardize": False},
                         "model": {"name": "logreg"}}
DPF = {"clip": 0.05, "noise_multiplier": 0.7}


def _no_exchange(*_: Any) -> Any:
    raise AssertionError("no protocol step expected")


@pytest.mark.parametrize(("privacy", "secure", "shape"), [
    ({}, None, "PlainSum(uniform=False)"),
    ({"mode": "dp_sgd", "clip": 1.0, "noise_multiplier": 1.0}, None, "PlainSum(uniform=False)"),
    ({"mode": "dp_fedavg_central", **DPF}, None, "CentralNoise(PlainSum(uniform=True))"),
    ({"mode": "dp_fedavg_central", **DPF}, "secagg", "CentralNoise(SecureSum(uniform=True))"),
    ({"mode": "dp_fedavg_distributed", **DPF}, "secagg", "SecureSum(uniform=True)"),
    ({"mode": "dp_fedavg_distributed", **DPF}, "ckks", "SecureSum(uniform=True)"),
    ({}, "secagg+", "SecureSum(uniform=False)"),
])
def test_each_study_gets_its_step(privacy: dict[str, Any], secure: str | None,
                                  shape: str) -> None:
    cfg = parse_config({**STUDY, **({"privacy": privacy} if privacy else {}),
                        **({"secure_aggregation": {"protocol": secure}} if secure else {})})
    settings = SecureSettings.of(cfg)
    step = hub_aggregation(secure=SecureAggregator(settings) if settings else None,
                           privacy=hub_privacy(cfg, 3), exchange=_no_exchange, study="agg",
                           min_completed=1, example_bounds=None)

    def show(s: Any) -> str:
        if isinstance(s, CentralNoise):
            return f"CentralNoise({show(s.inner)})"
        return f"{type(s).__name__}(uniform={s.uniform})"

    assert show(step) == shape


def _update(site: str, w: list[float], n: int, kind: UpdateKind = UpdateKind.FULL) -> Update:
    return Update(task_id=f"agg/r1/fit/{site}", site=site, round=1, kind=kind,
                  parameters=Parameters({"w": np.array(w, np.float32)}), num_examples=n)


def _inputs(updates: dict[str, Update], failures: dict[str, str] | None = None
            ) -> RoundInputs:
    sites = sorted({*updates, *(failures or {})})
    record = RoundRecord(round=1, sites_sampled=sites, sites_completed=sorted(updates),
                         sites_failed=dict(failures or {}))
    return RoundInputs(1, sites, updates, dict(failures or {}), G, record)


def test_plain_sum_weights_by_examples_or_uniformly_under_dp_fedavg() -> None:
    ups = {"a": _update("a", [1, 0, 0], 10), "b": _update("b", [0, 1, 0], 30)}
    stack = UpdateStack(G.spec, capacity=2)
    got = PlainSum().combine(_inputs(ups), stack)
    assert got.kind is UpdateKind.FULL and got.total is None
    assert list(stack.weights) == [10.0, 30.0] and stack.sites == ["a", "b"]
    with pytest.raises(RoundFailed, match="full model in a DP-FedAvg study"):
        PlainSum(uniform=True).combine(_inputs(ups), UpdateStack(G.spec, capacity=2))
    deltas = {s: _update(s, [1, 2, 3], 5, UpdateKind.DELTA) for s in ("a", "b")}
    stack = UpdateStack(G.spec, capacity=2)
    got = PlainSum(uniform=True).combine(_inputs(deltas), stack)
    assert got.kind is UpdateKind.DELTA and list(stack.weights) == [1.0, 1.0]
    np.testing.assert_array_equal(got.total, [2, 4, 6])


@dataclass
class _Noise:
    """A hub's DP half whose noise is a known vector."""

    add: np.ndarray
    seen: list[np.ndarray] = field(default_factory=list)

    def noisy_sum(self, total: np.ndarray) -> np.ndarray:
        self.seen.append(total.copy())
        return total + self.add


def test_central_noise_replaces_the_sum_of_the_clipped_differences() -> None:
    deltas = {s: _update(s, [1, 2, 3], 5, UpdateKind.DELTA) for s in ("a", "b")}
    noise = _Noise(np.array([2.0, 0.0, -2.0]))
    stack = UpdateStack(G.spec, capacity=2)
    got = CentralNoise(PlainSum(uniform=True), noise).combine(  # type: ignore[arg-type]
        _inputs(deltas), stack)
    np.testing.assert_array_equal(noise.seen[0], [2, 4, 6])
    # every row is the noisy mean: the uniform average is (sum + noise) / n
    np.testing.assert_array_equal(stack.rows, [[2, 2, 2], [2, 2, 2]])
    assert got.kind is UpdateKind.DELTA
    with pytest.raises(Exception, match="exact sum"):
        CentralNoise(PlainSum(), noise).combine(  # type: ignore[arg-type]
            _inputs({"a": _update("a", [1, 2, 3], 1)}), UpdateStack(G.spec, capacity=1))


@dataclass
class _FixedAggregator:
    """A secure aggregator whose protocol "ran" and gave this sum."""

    result: SecureResult
    calls: list[dict[str, Any]] = field(default_factory=list)

    def aggregate(self, exchange: Any, round_: int, participants: Any, fit: Any, *,
                  study: str, global_model: Parameters) -> SecureResult:
        self.calls.append({"round": round_, "study": study, "model": global_model})
        return self.result


def _secure_result(total: list[float], weight: float, included: list[str]) -> SecureResult:
    t = np.array(total)
    return SecureResult(G.flatten("float64") + t / weight, weight, included,
                        {"c": "sa_mask: gone"}, bytes_down=7, bytes_up=9, total=t)


def test_secure_sum_stacks_one_row_and_records_who_is_in_it() -> None:
    agg = _FixedAggregator(_secure_result([30, 60, 90], 30.0, ["a", "b"]))
    step = SecureSum(agg, _no_exchange, "agg", min_completed=2,  # type: ignore[arg-type]
                     example_bounds={"a": 10, "b": 20, "c": 5})
    inputs = _inputs({s: _update(s, [], 0) for s in "abc"})
    stack = UpdateStack(G.spec, capacity=3)
    got = step.combine(inputs, stack)
    assert agg.calls == [{"round": 1, "study": "agg", "model": G}]
    assert stack.sites == ["secure-sum"] and list(stack.weights) == [30.0]
    np.testing.assert_array_equal(stack.rows[0], [1, 2, 3])
    assert got.kind is UpdateKind.FULL
    assert inputs.record.sites_completed == ["a", "b"]
    assert inputs.record.sites_failed == {"c": "sa_mask: gone"}
    assert (inputs.record.bytes_down, inputs.record.bytes_up) == (7, 9)
    # central noise goes onto the exact sum: g + (sum + noise) / weight
    noise = _Noise(np.array([30.0, 0.0, 0.0]))
    stack = UpdateStack(G.spec, capacity=3)
    CentralNoise(step, noise).combine(_inputs({s: _update(s, [], 0) for s in "abc"}),  # type: ignore[arg-type]
                                      stack)
    np.testing.assert_array_equal(stack.rows[0], [2, 2, 3])


def test_secure_sum_refuses_a_claimed_weight_beyond_the_declared_rows() -> None:
    agg = _FixedAggregator(_secure_result([0, 0, 0], 31.0, ["a", "b"]))
    step = SecureSum(agg, _no_exchange, "agg", 1, {"a": 10, "b": 20})  # type: ignore[arg-type]
    inputs = _inputs({s: _update(s, [], 0) for s in "ab"})
    with pytest.raises(RoundFailed, match="exceeds the 30 examples"):
        step.combine(inputs, UpdateStack(G.spec, capacity=2))
    assert "(secure sum)" in inputs.record.sites_flagged
    few = SecureSum(_FixedAggregator(_secure_result([0, 0, 0], 1.0, ["a"])),  # type: ignore[arg-type]
                    _no_exchange, "agg", 2)
    with pytest.raises(RoundFailed, match="only 1 sites are in the secure sum"):
        few.combine(_inputs({s: _update(s, [], 0) for s in "ab"}),
                    UpdateStack(G.spec, capacity=2))


@dataclass
class _Replies:
    updates: dict[str, Update]
    failures: dict[str, str]
    bytes_down: int = 0
    bytes_up: int = 0


def test_the_secure_aggregator_needs_only_an_exchange_function() -> None:
    names = ["a", "b", "c"]
    settings = SecureSettings("secagg")
    sites = {n: SecureSite(n, settings, names) for n in names}
    vectors = {n: np.array([i + 1.0, -i, 0.5, 2.0]) for i, n in enumerate(names)}  # [w·Δ, w]

    def task(site: str, kind: TaskKind, aux: Any, meta: Any) -> Task:
        return Task(task_id=f"s/r1/{kind.value}/{site}", study="s", round=1, site=site,
                    kind=kind, parameters=Parameters({}), train=TrainConfig(), aux=aux,
                    seed=0, evaluate=False, strategy="fedavg", meta=dict(meta))

    def reply(site: str, aux: Any) -> Update:
        return Update(task_id="", site=site, round=1, kind=UpdateKind.DELTA,
                      parameters=Parameters({}), num_examples=0, aux=aux)

    fit = {n: reply(n, sites[n].start(task(n, TaskKind.FIT, {}, settings.meta(names)),
                                      vectors[n])) for n in names}
    kinds: list[TaskKind] = []

    def exchange(round_: int, kind: TaskKind, aux: Any, meta: Any) -> _Replies:
        kinds.append(kind)
        return _Replies({n: reply(n, sites[n].step(task(n, kind, a, meta)))
                         for n, a in aux.items()}, {})

    model = Parameters({"x": np.zeros(3)})
    got = SecureAggregator(settings).aggregate(exchange, 1, names, fit, study="s",
                                               global_model=model)
    assert kinds == [TaskKind.SECAGG_SHARE, TaskKind.SECAGG_MASK, TaskKind.SECAGG_UNMASK]
    assert got.included == names and got.total_weight == pytest.approx(6.0)
    assert got.total is not None
    np.testing.assert_allclose(got.total, sum(vectors.values())[:-1], atol=1e-6)
