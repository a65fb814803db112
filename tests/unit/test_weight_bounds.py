"""A site's FedAvg weight is bounded by what it declared; outliers are flagged (audit F3).

The audit's expD.py round 2: gamma declared 190 rows, then answered its fit task with
``params + 1e4`` and ``num_examples = 10**12``; the global model became the poisoned one and
nothing was logged. Here the same attack runs against the real round engine over the
in-memory transport, with real executors for the honest sites.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedcare.core.dataset import TaskType
from fedcare.core.learning import FitResult
from fedcare.core.messages import TrainConfig, Update, UpdateKind
from fedcare.core.params import Parameters
from fedcare.core.wire import decode_task, encode_update
from fedcare.engine.executor import SiteExecutor
from fedcare.engine.history import History
from fedcare.engine.integrity import (
    MIN_RELATIVE_SCALE,
    OUTLIER_Z,
    ROWS_SLACK,
    cap_examples,
    example_bound,
    robust_outliers,
)
from fedcare.engine.round_engine import EngineSettings, RoundEngine, RoundFailed
from fedcare.engine.secure import SecureAggregator, SecureSettings, SecureSite
from fedcare.learners.torch_learner import TorchLearner
from fedcare.strategies import FedAvg, SamplingOptions
from fedcare.transport.inmemory import InMemoryTransport
from tests.unit.helpers import make_sites

TRAIN = TrainConfig(local_epochs=1, batch_size=8, lr=0.3)
ROGUE_ROWS = 50  # what the rogue site "declared"


def _learner() -> TorchLearner:
    return TorchLearner.from_zoo("logreg", (5,), 1, TaskType.BINARY, {}, seed=0)


def _rogue(claim: int, offset: float = 1e4):
    """A hand-made site: its update is the task's model + ``offset``, claiming ``claim``
    examples (expD.py round 2)."""
    def handle(payload: bytes) -> bytes:
        task = decode_task(payload)
        poisoned = Parameters({k: (v + offset).astype(v.dtype) for k, v in
                               task.parameters.items()})
        return encode_update(Update(task_id=task.task_id, site=task.site, round=task.round,
                                    kind=UpdateKind.FULL, parameters=poisoned,
                                    num_examples=claim))
    return handle


def _engine(claim: int, bounds: dict[str, int] | None, *, offset: float = 1e4,
            n_honest: int = 3) -> RoundEngine:
    sites = make_sites(n_sites=n_honest, rows=40)
    learner = _learner()
    spec = learner.initial_parameters().spec
    handlers = {s.name: SiteExecutor(s, learner, site_index=i, expected=spec).handle
                for i, s in enumerate(sites)}
    handlers["rogue"] = _rogue(claim, offset)
    engine = RoundEngine(EngineSettings(study="f3", seed=1, train=TRAIN, evaluate_every=0),
                         FedAvg(), InMemoryTransport(handlers), sorted(handlers),
                         learner.initial_parameters(), History(study="f3"),
                         example_bounds=bounds)
    engine.strategy.initialize(engine.parameters)
    return engine


def _honest_bounds(n_honest: int = 3) -> dict[str, int]:
    return {f"site-{i + 1}": 50 for i in range(n_honest)}


def test_the_audit_attack_without_a_bound_takes_over_the_global_model() -> None:
    # the old behaviour, kept reachable (no bound): the weight is whatever the site claims
    engine = _engine(10**12, None)
    before = engine.parameters.flatten("float64")
    engine.run_round(1)
    shift = engine.parameters.flatten("float64") - before
    assert np.allclose(shift, 1e4, rtol=1e-3)


def test_a_claimed_weight_above_the_declared_rows_is_capped_and_flagged() -> None:
    bounds = {**_honest_bounds(), "rogue": example_bound(ROGUE_ROWS)}
    capped = _engine(10**12, bounds)
    honest_claim = _engine(example_bound(ROGUE_ROWS), None)  # same attack, truthful weight
    before = capped.parameters.flatten("float64")
    rec = capped.run_round(1)
    honest_claim.run_round(1)
    # exactly the model of a rogue that had claimed its bound: the weight was capped to it
    assert capped.parameters.allclose(honest_claim.parameters, rtol=1e-6, atol=1e-6)
    share = example_bound(ROGUE_ROWS) / (example_bound(ROGUE_ROWS) + 3 * 40)
    shift = capped.parameters.flatten("float64") - before
    assert np.all(np.abs(shift) < 1e4 * share * 1.01)  # bounded by its declared share
    flag = rec.sites_flagged["rogue"]
    assert f"claimed {10**12} training examples" in flag and "capped to 59" in flag
    assert "robust z-scores above the round's median" in flag
    assert set(rec.sites_flagged) == {"rogue"}
    assert "rogue" in rec.sites_completed  # flagged, not dropped
    assert capped.history.rounds[-1].sites_flagged == rec.sites_flagged


def test_an_outlier_with_a_truthful_weight_is_flagged_but_still_aggregated() -> None:
    bounds = {**_honest_bounds(), "rogue": example_bound(ROGUE_ROWS)}
    engine = _engine(40, bounds)
    rec = engine.run_round(1)
    assert list(rec.sites_flagged) == ["rogue"]
    assert "claimed" not in rec.sites_flagged["rogue"]
    assert "rogue" in rec.sites_completed


def test_honest_rounds_flag_nothing() -> None:
    sites = make_sites(n_sites=5, rows=40)
    learner = _learner()
    spec = learner.initial_parameters().spec
    handlers = {s.name: SiteExecutor(s, learner, site_index=i, expected=spec).handle
                for i, s in enumerate(sites)}
    engine = RoundEngine(EngineSettings(study="ok", seed=1, train=TRAIN),
                         FedAvg(), InMemoryTransport(handlers), sorted(handlers),
                         learner.initial_parameters(), History(study="ok"),
                         example_bounds={s.name: 50 for s in sites})
    engine.run(4)
    assert all(r.sites_flagged == {} for r in engine.history.rounds)
    assert "sites_flagged" not in engine.history.final


def test_a_site_without_a_declared_bound_counts_for_nothing() -> None:
    engine = _engine(40, _honest_bounds(), offset=0.0)  # "rogue" missing from the bounds
    rec = engine.run_round(1)
    assert "capped to 0" in rec.sites_flagged["rogue"]


def test_the_bound_also_caps_evaluation_weights() -> None:
    update = Update(task_id="t", site="a", round=1, kind=UpdateKind.FULL,
                    parameters=Parameters({}), num_examples=0, num_eval_examples=10**9)
    capped, why = cap_examples(update, 59)
    assert capped.num_eval_examples == 59 and capped.num_examples == 0
    assert why is not None and "evaluation" in why
    assert cap_examples(replace(update, num_eval_examples=59), 59) == (
        replace(update, num_eval_examples=59), None)


def test_example_bound_allows_rows_rounded_down_to_ten() -> None:
    assert example_bound(190) == 190 + ROWS_SLACK == 199
    assert example_bound(10**400) == 2**40
    assert example_bound(-5) == ROWS_SLACK


# -- secure aggregation: only the total weight is visible -----------------------------------
class _LyingLearner:
    """A real learner whose fit result claims ``claim`` examples (the weight a secure site
    puts in its masked contribution)."""

    def __init__(self, inner: TorchLearner, claim: int) -> None:
        self.inner, self.claim, self.name = inner, claim, inner.name

    def initial_parameters(self) -> Parameters:
        return self.inner.initial_parameters()

    def fit(self, parameters, x, y, config, *, seed, correction=None) -> FitResult:
        result = self.inner.fit(parameters, x, y, config, seed=seed, correction=correction)
        return replace(result, num_examples=self.claim)

    def evaluate(self, parameters, x, y):
        return self.inner.evaluate(parameters, x, y)


def _secure_engine(claim: int) -> RoundEngine:
    sites = make_sites(n_sites=3, rows=40)
    names = [s.name for s in sites]
    settings = SecureSettings("secagg")
    handlers = {}
    for i, s in enumerate(sites):
        learner = _LyingLearner(_learner(), claim) if i == 0 else _learner()
        ex = SiteExecutor(s, learner, site_index=i,
                          expected=learner.initial_parameters().spec,
                          secure=SecureSite(s.name, settings, names))
        handlers[s.name] = ex.handle
    return RoundEngine(EngineSettings(study="sec", seed=3, train=TRAIN, evaluate_every=0),
                       FedAvg(SamplingOptions(min_completed=2)), InMemoryTransport(handlers),
                       names, _learner().initial_parameters(), History(study="sec"),
                       secure=SecureAggregator(settings),
                       example_bounds={n: example_bound(50) for n in names})


def test_a_secure_sum_heavier_than_the_declared_rows_is_refused() -> None:
    engine = _secure_engine(claim=10**6)
    before = engine.parameters
    engine.strategy.initialize(engine.parameters)
    with pytest.raises(RoundFailed, match=r"aggregate refused: the secure sum's total weight "
                                          r"1\.00008e\+06 exceeds the 177 examples"):
        engine.run_round(1)
    assert engine.parameters is before  # the global model is unchanged


def test_a_truthful_secure_round_passes_the_weight_check() -> None:
    engine = _secure_engine(claim=40)
    engine.strategy.initialize(engine.parameters)
    rec = engine.run_round(1)
    assert rec.sites_completed == ["site-1", "site-2", "site-3"]
    assert "(secure sum)" not in rec.sites_flagged


# -- the robust z-score ---------------------------------------------------------------------
def test_robust_outliers_finds_the_far_one_and_needs_three() -> None:
    assert set(robust_outliers({"a": 1.0, "b": 1.2, "c": 0.9, "d": 3e4})) == {"d"}
    assert robust_outliers({"a": 1.0, "b": 3e4}) == {}
    assert robust_outliers({"a": 1.0, "b": 1.0, "c": 1.0}) == {}
    assert robust_outliers({"a": 1.0, "b": 1.0, "c": 1.01}) == {}  # agreement, not an outlier
    assert set(robust_outliers({"a": 1.0, "b": 1.0, "c": 1e4})) == {"c"}
    assert robust_outliers({"a": 1.0, "b": 2.0, "c": math.inf}) == {"c": math.inf}


@given(st.lists(st.floats(0.5, 2.0), min_size=3, max_size=30),
       st.floats(1e3, 1e12))
def test_one_far_update_among_similar_ones_is_always_flagged(honest: list[float],
                                                             far: float) -> None:
    distances = {f"s{i}": d for i, d in enumerate(honest)} | {"rogue": far}
    flagged = robust_outliers(distances)
    assert "rogue" in flagged
    # a distance within 1 + OUTLIER_Z x MIN_RELATIVE_SCALE of the median is never flagged
    median = float(np.median(list(distances.values())))
    limit = (1 + OUTLIER_Z * MIN_RELATIVE_SCALE) * median
    assert all(distances[s] > limit for s in flagged)
