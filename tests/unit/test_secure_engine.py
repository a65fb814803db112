"""Secure aggregation inside the round engine: the same model as plain FedAvg, from sums only.

The engine runs the real protocols (X25519 + Shamir masking, or CKKS) over the in-memory
transport, exactly as it does over HTTPS. Checks: the global model equals plain FedAvg's (up
to the fixed-point / CKKS error), what reaches the engine never holds one site's update,
dropouts at every step are survived or abort the round cleanly, and a site never sends a plain
update when its study says secure (nor a secure one when it does not).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest

from fedcare.core.dataset import TaskType
from fedcare.core.messages import TaskKind, TrainConfig
from fedcare.core.wire import decode_task, peek_header
from fedcare.engine.executor import SiteExecutor
from fedcare.engine.history import History
from fedcare.engine.round_engine import EngineSettings, RoundEngine, RoundFailed
from fedcare.engine.secure import (
    PROTOCOL_AUX,
    SecureAggregator,
    SecureSettings,
    SecureSite,
    contribution,
)
from fedcare.learners.torch_learner import TorchLearner
from fedcare.strategies import FedAvg, SamplingOptions
from fedcare.transport.inmemory import InMemoryTransport
from tests.unit.helpers import make_sites

TRAIN = TrainConfig(local_epochs=1, batch_size=8, lr=0.3)


def _learner() -> TorchLearner:
    return TorchLearner.from_zoo("mlp", (5,), 1, TaskType.BINARY, {"hidden": [6]}, seed=0)


@pytest.fixture(scope="module")
def he_contexts() -> tuple[bytes, bytes]:
    from fedcare.privacy.he import create_federation_context

    return create_federation_context()


def _engine(n_sites: int, settings: SecureSettings | None, *, public: bytes | None = None,
            wrap: Callable[[str, Callable[[bytes], bytes]], Callable[[bytes], bytes]]
            | None = None, min_completed: int = 1) -> RoundEngine:
    sites = make_sites(n_sites=n_sites, rows=40)
    learner = _learner()
    spec = learner.initial_parameters().spec
    names = [s.name for s in sites]
    handlers = {}
    for i, s in enumerate(sites):
        secure = SecureSite(s.name, settings, names) if settings else None
        ex = SiteExecutor(s, learner, site_index=i, expected=spec, secure=secure)
        handlers[s.name] = wrap(s.name, ex.handle) if wrap else ex.handle
    aggregator = (SecureAggregator(settings, public) if settings else None)
    return RoundEngine(EngineSettings(study="sec", seed=3, train=TRAIN, evaluate_every=1),
                       FedAvg(SamplingOptions(min_completed=min_completed)),
                       InMemoryTransport(handlers), names, learner.initial_parameters(),
                       History(study="sec"), secure=aggregator)


def _recording(seen: list[bytes]) -> Callable[[str, Callable[[bytes], bytes]],
                                              Callable[[bytes], bytes]]:
    def wrap(site: str, handle: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
        def h(payload: bytes) -> bytes:
            reply = handle(payload)
            seen.append(reply)
            return reply
        return h
    return wrap


@pytest.mark.parametrize("protocol", ["secagg", "secagg+", "ckks"])
def test_secure_rounds_give_the_plain_fedavg_model(protocol: str,
                                                   he_contexts: tuple[bytes, bytes]) -> None:
    secret, public = he_contexts
    settings = SecureSettings(protocol, he_context=secret if protocol == "ckks" else None)
    plain = _engine(5, None)
    secure = _engine(5, settings, public=public)
    plain.run(3)
    secure.run(3)
    tol = 1e-6 if protocol != "ckks" else 1e-4
    for k, v in plain.parameters.items():
        np.testing.assert_allclose(secure.parameters[k], v, atol=tol, err_msg=k)
    assert secure.history.rounds[-1].sites_completed == sorted(plain.sites)
    # evaluation piggybacks on the secure fit tasks as usual
    assert secure.history.rounds[0].global_metrics


@pytest.mark.parametrize("protocol", ["secagg", "ckks"])
def test_no_reply_the_hub_receives_holds_a_sites_update(protocol: str,
                                                        he_contexts: tuple[bytes, bytes]) -> None:
    secret, public = he_contexts
    seen: list[bytes] = []
    engine = _engine(4, SecureSettings(protocol, he_context=secret), public=public,
                     wrap=_recording(seen))
    engine.strategy.initialize(engine.parameters)
    global_before = engine.parameters
    engine.run_round(1)
    # Every site's true contribution for round 1 (same seeds, plain executors).
    plain_sites = make_sites(n_sites=4, rows=40)
    learner = _learner()
    truths = []
    for i, s in enumerate(plain_sites):
        from fedcare.core.seeds import site_round_seed

        res = learner.fit(global_before, s.x_train, s.y_train, TRAIN,
                          seed=site_round_seed(3, 1, i))
        truths.append(contribution(res.parameters, global_before, res.num_examples))
    for reply in seen:
        assert peek_header(reply)["type"] == "update"
        from fedcare.core.wire import _unpack

        _, params, aux = _unpack(reply)
        assert not params, "a secure reply carried model parameters"
        for arr in aux[PROTOCOL_AUX].values():
            flat = np.asarray(arr).reshape(-1)
            for t in truths:
                if flat.size >= t.size - 1 and flat.dtype.kind == "f":
                    # the only float arrays are sums (he_decrypt) - never one site's vector
                    assert not np.allclose(flat[: t.size], t, atol=1e-3)
                if flat.dtype.kind == "u" and flat.size == t.size:
                    decoded = flat.view(np.int64) / 2.0**24
                    assert not np.allclose(decoded, t, atol=1e-3)


def test_sites_dropping_after_masked_input_are_recovered() -> None:
    dropped = {"site-1"}

    def wrap(site: str, handle: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
        def h(payload: bytes) -> bytes:
            if site in dropped and peek_header(payload)["kind"] == TaskKind.SECAGG_UNMASK:
                raise ConnectionError("site went away")
            return handle(payload)
        return h

    engine = _engine(5, SecureSettings("secagg"), wrap=wrap)
    plain = _engine(5, None)
    engine.run(1)
    plain.run(1)
    rec = engine.history.rounds[0]
    # it sent its masked input, so its update IS in the sum; its masks are recovered
    assert rec.sites_completed == sorted(engine.sites)
    assert "site-1" in rec.sites_failed
    for k, v in plain.parameters.items():
        np.testing.assert_allclose(engine.parameters[k], v, atol=1e-6)


def test_a_site_dropping_before_masked_input_is_excluded_cleanly() -> None:
    def wrap(site: str, handle: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
        def h(payload: bytes) -> bytes:
            if site == "site-2" and peek_header(payload)["kind"] == TaskKind.SECAGG_MASK:
                raise ConnectionError("site went away")
            return handle(payload)
        return h

    engine = _engine(5, SecureSettings("secagg"), wrap=wrap)
    engine.run(1)
    rec = engine.history.rounds[0]
    assert "site-2" not in rec.sites_completed and "site-2" in rec.sites_failed
    # equals plain FedAvg over the four others
    others = _engine(5, None, wrap=lambda s, h: (
        (lambda p: (_ for _ in ()).throw(ConnectionError("x"))) if s == "site-2" else h))
    others.run(1)
    for k, v in others.parameters.items():
        np.testing.assert_allclose(engine.parameters[k], v, atol=1e-6)


def test_too_many_dropouts_abort_the_round_and_leave_the_model_untouched() -> None:
    def wrap(site: str, handle: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
        def h(payload: bytes) -> bytes:
            # 3 of 5 gone: fewer than the strict majority (t = 3) survive
            if site in ("site-1", "site-2", "site-3") and \
                    peek_header(payload)["kind"] == TaskKind.SECAGG_SHARE:
                raise ConnectionError("gone")
            return handle(payload)
        return h

    engine = _engine(5, SecureSettings("secagg"), wrap=wrap)
    engine.strategy.initialize(engine.parameters)
    before = engine.parameters
    with pytest.raises(RoundFailed, match="secure aggregation aborted"):
        engine.run_round(1)
    assert engine.parameters is before


def test_a_secure_site_refuses_a_plain_fit_and_a_plain_site_a_secure_one() -> None:
    sites = make_sites(n_sites=3, rows=40)
    learner = _learner()
    spec = learner.initial_parameters().spec
    names = [s.name for s in sites]
    secure_ex = SiteExecutor(sites[0], learner, site_index=0, expected=spec,
                             secure=SecureSite(names[0], SecureSettings("secagg"), names))
    plain_ex = SiteExecutor(sites[1], learner, site_index=1, expected=spec)
    # a plain engine asks the secure site for a plain update
    engine = RoundEngine(EngineSettings(study="p", seed=0, train=TRAIN), FedAvg(),
                         InMemoryTransport({names[0]: secure_ex.handle,
                                            names[1]: plain_ex.handle}),
                         names[:2], learner.initial_parameters(), History(study="p"))
    ex = engine.exchange(1, names[:2], TaskKind.FIT, evaluate=False, train=TRAIN, aux={})
    assert names[0] in ex.failures and "secure aggregation" in ex.failures[names[0]]
    assert names[1] in ex.updates
    # a secure-looking task to the plain site
    ex = engine.exchange(1, names[:2], TaskKind.FIT, evaluate=False, train=TRAIN, aux={},
                         meta=SecureSettings("secagg").meta(names[:2]))
    assert names[1] in ex.failures and "does not use it" in ex.failures[names[1]]


def test_a_site_refuses_a_participant_list_outside_its_study_or_another_protocol() -> None:
    sites = make_sites(n_sites=3, rows=40)
    learner = _learner()
    spec = learner.initial_parameters().spec
    names = [s.name for s in sites]
    ex = SiteExecutor(sites[0], learner, site_index=0, expected=spec,
                      secure=SecureSite(names[0], SecureSettings("secagg"), names))
    engine = RoundEngine(EngineSettings(study="p", seed=0, train=TRAIN), FedAvg(),
                         InMemoryTransport({names[0]: ex.handle}), names[:1],
                         learner.initial_parameters(), History(study="p"))
    got = engine.exchange(1, names[:1], TaskKind.FIT, evaluate=False, train=TRAIN, aux={},
                          meta={"secure": "secagg", "participants": [names[0], "mallory"]})
    assert "outside the study" in got.failures[names[0]]
    got = engine.exchange(1, names[:1], TaskKind.FIT, evaluate=False, train=TRAIN, aux={},
                          meta={"secure": "ckks", "participants": names})
    assert "approved study uses 'secagg'" in got.failures[names[0]]


def test_a_protocol_step_task_may_not_carry_the_model() -> None:
    from fedcare.core.errors import ValidationError
    from fedcare.core.messages import Task
    from fedcare.core.wire import encode_task

    learner = _learner()
    task = Task(task_id="x/r1/sa_share/a", study="x", round=1, site="a",
                kind=TaskKind.SECAGG_SHARE, parameters=learner.initial_parameters())
    with pytest.raises(ValidationError, match="must not carry model parameters"):
        decode_task(encode_task(task))
    ok = dataclasses.replace(task, parameters=type(task.parameters)({}))
    assert decode_task(encode_task(ok)).kind is TaskKind.SECAGG_SHARE


def test_a_ciphertext_under_another_context_is_left_out_and_the_round_goes_on(
        he_contexts: tuple[bytes, bytes]) -> None:
    from fedcare.privacy.he import create_federation_context

    secret, public = he_contexts
    foreign_secret, _ = create_federation_context()
    sites = make_sites(n_sites=4, rows=40)
    learner = _learner()
    spec = learner.initial_parameters().spec
    names = [s.name for s in sites]
    handlers = {}
    for i, s in enumerate(sites):
        ctx = foreign_secret if s.name == "site-2" else secret
        ex = SiteExecutor(s, learner, site_index=i, expected=spec,
                          secure=SecureSite(s.name, SecureSettings("ckks", he_context=ctx),
                                            names))
        handlers[s.name] = ex.handle
    engine = RoundEngine(EngineSettings(study="he", seed=3, train=TRAIN), FedAvg(),
                         InMemoryTransport(handlers), names, learner.initial_parameters(),
                         History(study="he"),
                         secure=SecureAggregator(SecureSettings("ckks"), public))
    engine.run(1)
    rec = engine.history.rounds[0]
    assert rec.sites_completed == ["site-1", "site-3", "site-4"]
    assert "site-2" in rec.sites_failed and "context" in rec.sites_failed["site-2"]


def test_ckks_never_decrypts_a_sum_of_one_site(he_contexts: tuple[bytes, bytes]) -> None:
    secret, public = he_contexts

    def wrap(site: str, handle: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
        def h(payload: bytes) -> bytes:
            if site != "site-1" and peek_header(payload)["kind"] == TaskKind.FIT:
                raise ConnectionError("gone")
            return handle(payload)
        return h

    engine = _engine(3, SecureSettings("ckks", he_context=secret), public=public, wrap=wrap)
    engine.strategy.initialize(engine.parameters)
    with pytest.raises(RoundFailed, match="must include at least"):
        engine.run_round(1)
    # and a site asked to decrypt a "sum" naming fewer sites than the threshold refuses
    from fedcare.core.messages import Task
    from fedcare.core.params import Parameters
    from fedcare.engine.secure import _as_aux

    sites = make_sites(n_sites=3, rows=40)
    names = [s.name for s in sites]
    site = SecureSite(names[0], SecureSettings("ckks", he_context=secret), names)
    fit = Task(task_id="x/r1/fit/site-1", study="x", round=1, site=names[0],
               kind=TaskKind.FIT, parameters=Parameters({}),
               meta={"secure": "ckks", "participants": names})
    ct = site.start(fit, np.ones(5))["sp"]["ct"]
    step = dataclasses.replace(fit, task_id="x/r1/he_decrypt/site-1", kind=TaskKind.HE_DECRYPT,
                               aux=_as_aux({"ct": np.asarray(ct)}),
                               meta={**fit.meta, "included": [names[0]]})
    from fedcare.core.errors import ProtocolError

    with pytest.raises(ProtocolError, match="at least"):
        site.step(step)
    # a re-delivered fit gets the same answer (no second session to difference against)
    assert site.start(fit, np.ones(5))["sp"]["ct"] is ct


def test_a_site_never_masks_an_earlier_round_again() -> None:
    from fedcare.core.errors import ProtocolError
    from fedcare.core.messages import Task
    from fedcare.core.params import Parameters

    names = ["site-1", "site-2", "site-3"]
    site = SecureSite(names[0], SecureSettings("secagg"), names)

    def fit(r: int) -> Task:
        return Task(task_id=f"x/r{r}/fit/site-1", study="x", round=r, site=names[0],
                    kind=TaskKind.FIT, parameters=Parameters({}),
                    meta={"secure": "secagg", "participants": names})

    site.start(fit(1), np.ones(4))
    site.start(fit(2), np.ones(4))
    with pytest.raises(ProtocolError, match="already answered"):
        site.start(fit(1), np.ones(4))
