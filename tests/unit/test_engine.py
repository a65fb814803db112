"""The round engine with real learners over the in-memory and worker-process transports."""

from __future__ import annotations

import numpy as np
import pytest

from fedcare.core.dataset import TaskType
from fedcare.core.messages import TrainConfig
from fedcare.core.params import Parameters
from fedcare.engine.executor import SiteExecutor
from fedcare.engine.history import History
from fedcare.engine.round_engine import EngineSettings, RoundEngine, RoundFailed
from fedcare.learners.torch_learner import TorchLearner
from fedcare.sim.sites import pooled
from fedcare.strategies import FedAvg, SamplingOptions
from fedcare.transport.inmemory import InMemoryTransport
from fedcare.transport.processes import ProcessTransport
from tests.unit.helpers import PoisonedLearner, make_sites


def _learner(features: int = 5) -> TorchLearner:
    return TorchLearner.from_zoo("logreg", (features,), 1, TaskType.BINARY, {}, seed=0)


def _engine(sites, learner, train: TrainConfig, strategy=None, transport_cls=None,
            **settings) -> RoundEngine:
    spec = learner.initial_parameters().spec
    executors = {s.name: SiteExecutor(s, learner, site_index=i, expected=spec)
                 for i, s in enumerate(sites)}
    handlers = {n: e.handle for n, e in executors.items()}
    transport = (transport_cls or InMemoryTransport)(handlers)
    return RoundEngine(EngineSettings(study="t", seed=0, train=train, **settings),
                       strategy or FedAvg(), transport, [s.name for s in sites],
                       learner.initial_parameters(), History(study="t"))


def test_fedavg_with_one_full_batch_step_equals_centralized_gradient_descent() -> None:
    # FedSGD equivalence: one full-batch step per site, averaged by examples, is exactly one
    # gradient step on the pooled data (mean loss), round after round.
    sites = make_sites(n_sites=3, rows=30)
    train = TrainConfig(local_steps=1, batch_size=10_000, lr=0.5)
    fed = _engine(sites, _learner(), train)
    central = _engine([pooled(sites)], _learner(), train)
    fed.strategy.initialize(fed.parameters)
    central.strategy.initialize(central.parameters)
    for r in range(1, 6):
        fed.run_round(r)
        central.run_round(r)
    assert fed.parameters.allclose(central.parameters, rtol=1e-5, atol=1e-6)


def test_fedavg_of_identical_sites_equals_training_on_one_of_them() -> None:
    site = make_sites(n_sites=1, rows=64)[0]
    clones = [type(site)(f"clone-{i}", site.x_train, site.y_train, site.x_test, site.y_test,
                         site.feature_names, site.task, site.num_classes) for i in range(4)]
    train = TrainConfig(local_epochs=2, batch_size=64, lr=0.3)
    fed = _engine(clones, _learner(), train)
    alone = _engine([site], _learner(), train)
    fed.run(4)
    alone.run(4)
    assert fed.parameters.allclose(alone.parameters, rtol=1e-5, atol=1e-6)


def test_round_completes_without_a_site_that_sends_nan_and_records_why() -> None:
    sites = make_sites(n_sites=3, rows=40)
    bad = make_sites(n_sites=1, rows=33, seed=5)[0]
    bad = type(bad)("site-bad", *[getattr(bad, f) for f in
                                  ("x_train", "y_train", "x_test", "y_test", "feature_names",
                                   "task", "num_classes")])
    learner = PoisonedLearner(_learner(), bad_rows=33)
    engine = _engine([*sites, bad], learner, TrainConfig())
    engine.run(2)
    for rec in engine.history.rounds:
        assert "site-bad" in rec.sites_failed and "NaN" in rec.sites_failed["site-bad"]
        assert "site-bad" not in rec.sites_completed
    assert all(np.isfinite(v).all() for v in engine.parameters.values())


def test_a_site_that_crashes_is_left_out_with_its_error() -> None:
    sites = make_sites(n_sites=3, rows=40)
    learner = PoisonedLearner(_learner(), bad_rows=40, mode="raise")
    sites[0] = make_sites(n_sites=1, rows=41)[0]
    engine = _engine(sites, learner, TrainConfig(), strategy=FedAvg(SamplingOptions()))
    rec = engine.run_round(1) if engine.strategy.initialize(engine.parameters) is None else None
    assert rec is not None and set(rec.sites_failed) == {"site-2", "site-3"}
    assert "disk full" in rec.sites_failed["site-2"]


def test_round_with_too_few_completions_fails_and_keeps_the_global_model() -> None:
    sites = make_sites(n_sites=2, rows=40)
    learner = PoisonedLearner(_learner(), bad_rows=40, mode="raise")
    engine = _engine(sites, learner, TrainConfig(),
                     strategy=FedAvg(SamplingOptions(min_completed=1)))
    before = engine.parameters
    with pytest.raises(RoundFailed, match="only 0 of 2"):
        engine.run(1)
    assert engine.parameters is before and engine.history.rounds == []


def test_evaluation_is_attributed_to_the_model_that_was_evaluated() -> None:
    sites = make_sites(n_sites=2, rows=40)
    engine = _engine(sites, _learner(), TrainConfig(), evaluate_every=1)
    engine.run(3)
    h = engine.history
    assert h.initial["global_metrics"]["accuracy"] >= 0
    assert all(r.global_metrics for r in h.rounds)
    assert h.final["global_metrics"] == h.rounds[-1].global_metrics


def test_process_transport_gives_the_same_model_as_in_memory() -> None:
    sites = make_sites(n_sites=4, rows=50)
    train = TrainConfig(local_epochs=2, batch_size=8, lr=0.1)
    seq = _engine(sites, _learner(), train)
    seq.run(3)
    par = _engine(sites, _learner(), train,
                  transport_cls=lambda h: ProcessTransport(h, workers=2))
    try:
        par.run(3)
    finally:
        par.transport.close()
    assert seq.parameters.allclose(par.parameters, rtol=1e-6, atol=1e-7)


def test_a_reply_routed_to_the_wrong_site_is_refused_not_counted() -> None:
    sites = make_sites(n_sites=2, rows=40)
    engine = _engine(sites, _learner(), TrainConfig())
    engine.strategy.initialize(engine.parameters)
    handlers = engine.transport._handlers  # type: ignore[attr-defined]
    handlers["site-2"], handlers["site-1"] = handlers["site-1"], handlers["site-2"]
    with pytest.raises(RoundFailed, match="addressed to 'site-1' reached 'site-2'"):
        engine.run_round(1)
    assert engine.history.rounds == []


def test_parameters_stay_finite_and_typed() -> None:
    p = _learner().initial_parameters()
    assert isinstance(p, Parameters) and all(v.dtype == np.float32 for v in p.values())
