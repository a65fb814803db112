"""Feature statistics under secure aggregation (audit F6): the engine learns only the
federation's ``[count, sums, sums of squares]``, never one site's, over the real protocols
(masking and CKKS) on the in-memory transport - the same code the hub runs over HTTPS."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from fedcare.core.dataset import TaskType
from fedcare.core.messages import Task, TaskKind
from fedcare.core.params import Parameters
from fedcare.core.wire import _unpack, decode_reply, encode_task, peek_header
from fedcare.data.standardize import federated_standardizer, site_sums
from fedcare.engine.executor import STATS, SiteExecutor, stats_vector
from fedcare.engine.history import History
from fedcare.engine.privacy import STATS_ROUND
from fedcare.engine.round_engine import EngineSettings, RoundEngine, RoundFailed
from fedcare.engine.secure import (
    PROTOCOL_AUX,
    SecureAggregator,
    SecureSettings,
    SecureSite,
    sites_in_any_sum,
    vector_contribution,
)
from fedcare.learners.torch_learner import TorchLearner
from fedcare.strategies import FedAvg
from fedcare.transport.inmemory import InMemoryTransport
from tests.unit.helpers import make_sites
from tests.unit.test_secure_engine import TRAIN

Wrap = Callable[[str, Callable[[bytes], bytes]], Callable[[bytes], bytes]]


@pytest.fixture(scope="module")
def he_contexts() -> tuple[bytes, bytes]:
    from fedcare.privacy.he import create_federation_context

    return create_federation_context()


def _sites(n: int) -> list:
    sites = make_sites(n_sites=n, rows=30)
    # large, shifted values: a sum of squares is then unmistakable in any encoding
    return [s.__class__(s.name, s.x_train * 37.0 + 500.0, s.y_train, s.x_test, s.y_test,
                        s.feature_names, s.task, s.num_classes) for s in sites]


def _engine(sites: list, settings: SecureSettings | None, *, public: bytes | None = None,
            wrap: Wrap | None = None) -> RoundEngine:
    learner = TorchLearner.from_zoo("logreg", (5,), 1, TaskType.BINARY, {}, seed=0)
    spec = learner.initial_parameters().spec
    names = [s.name for s in sites]
    handlers = {}
    for i, s in enumerate(sites):
        ex = SiteExecutor(s, learner, site_index=i, expected=spec,
                          secure=SecureSite(s.name, settings, names) if settings else None)
        handlers[s.name] = wrap(s.name, ex.handle) if wrap else ex.handle
    return RoundEngine(EngineSettings(study="st", seed=1, train=TRAIN), FedAvg(),
                       InMemoryTransport(handlers), names, learner.initial_parameters(),
                       History(study="st"),
                       secure=SecureAggregator(settings, public) if settings else None)


def _recording(seen: list[bytes]) -> Wrap:
    def wrap(site: str, handle: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
        def h(payload: bytes) -> bytes:
            reply = handle(payload)
            seen.append(reply)
            return reply
        return h
    return wrap


def _find_site_stats(replies: list[bytes], sites: list) -> list[str]:
    """Where any reply holds one site's stats vector: as floats, or as secagg fixed point."""
    truths = [vector_contribution(stats_vector(*site_sums(s.x_train))) for s in sites]
    hits = []
    for reply in replies:
        _, params, aux = _unpack(reply)
        arrays = [a for p in (aux or {}).values() for a in p.values()]
        arrays += list((params or {}).values())
        for arr in arrays:
            flat = np.asarray(arr).reshape(-1)
            for i, t in enumerate(truths):
                if flat.dtype.kind == "f" and flat.size == t.size and np.allclose(
                        flat, t, rtol=1e-6):
                    hits.append(f"site {i} as floats")
                if flat.dtype.kind in "ui" and flat.size == t.size and np.allclose(
                        flat.view(np.int64) / 2.0**24, t, rtol=1e-6):
                    hits.append(f"site {i} as fixed point")
                raw = flat.tobytes()
                if t[1:4].tobytes() in raw or t[1:4].astype(np.float32).tobytes() in raw:
                    hits.append(f"site {i} sums as bytes")
    return hits


@pytest.mark.parametrize("protocol", ["secagg", "secagg+", "ckks"])
def test_the_engine_learns_only_the_federations_stats(protocol: str,
                                                      he_contexts: tuple[bytes, bytes]
                                                      ) -> None:
    secret, public = he_contexts
    sites = _sites(4)
    seen: list[bytes] = []
    settings = SecureSettings(protocol, he_context=secret if protocol == "ckks" else None)
    norm = _engine(sites, settings, public=public, wrap=_recording(seen)).feature_statistics(5)
    mean, std = federated_standardizer([s.x_train for s in sites])
    np.testing.assert_allclose(norm["mean"], mean, rtol=1e-5)
    np.testing.assert_allclose(norm["std"], std, rtol=1e-4)
    kinds = {peek_header(r)["task_id"].split("/")[2] for r in seen}
    assert TaskKind.STATS.value in kinds and len(kinds) > 1  # the protocol ran after stats
    assert all(peek_header(r)["round"] == STATS_ROUND for r in seen)
    for r in seen:  # protocol messages only: no stats reply exists in a secure study
        assert set(_unpack(r)[2]) == {PROTOCOL_AUX}
    assert _find_site_stats(seen, sites) == []


def test_the_search_finds_plain_stats() -> None:
    """The check above is not vacuous: a plain study's stats replies hold every site's."""
    sites = _sites(3)
    seen: list[bytes] = []
    _engine(sites, None, wrap=_recording(seen)).feature_statistics(5)
    assert len(_find_site_stats(seen, sites)) >= 3


def test_a_secure_site_never_sends_plain_stats_and_a_plain_one_never_secure() -> None:
    site = _sites(1)[0]
    learner = TorchLearner.from_zoo("logreg", (5,), 1, TaskType.BINARY, {}, seed=0)
    spec = learner.initial_parameters().spec
    secure = SiteExecutor(site, learner, site_index=0, expected=spec,
                          secure=SecureSite(site.name, SecureSettings("secagg"),
                                            [site.name, "b"]))
    plain = SiteExecutor(site, learner, site_index=0, expected=spec)
    ask_plain = Task(f"s/r0/stats/{site.name}", "s", 0, site.name, TaskKind.STATS,
                     learner.initial_parameters())
    ask_secure = Task(ask_plain.task_id, "s", 0, site.name, TaskKind.STATS,
                      learner.initial_parameters(),
                      meta={"secure": "secagg", "participants": [site.name, "b"]})
    for ex, task, why in ((secure, ask_plain, "asks for plain ones"),
                          (plain, ask_secure, "does not use it")):
        reply = decode_reply(ex.handle(encode_task(task)), Parameters({}).spec,
                             {STATS: None, PROTOCOL_AUX: None})
        assert reply.error_type == "ProtocolError" and why in reply.message


def test_a_sum_missing_a_site_is_no_normalizer() -> None:
    """Every site must be in the federation's statistics (a site that drops before its masked
    input fails the exchange): a normalizer without a site would not describe its data."""
    sites = _sites(4)

    def wrap(site: str, handle: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
        def h(payload: bytes) -> bytes:
            if site == "site-2" and peek_header(payload)["kind"] == TaskKind.SECAGG_MASK:
                raise ConnectionError("site went away")
            return handle(payload)
        return h

    eng = _engine(sites, SecureSettings("secagg", threshold=0.7), wrap=wrap)
    with pytest.raises(RoundFailed, match="feature statistics failed at"):
        eng.feature_statistics(5)


@pytest.mark.parametrize(("protocol", "n", "threshold", "expected"), [
    ("secagg", 3, 0.67, 3), ("secagg", 10, 0.67, 7), ("secagg", 4, 0.51, 3),
    ("secagg+", 10, 0.6, 6), ("ckks", 3, 0.67, 3), ("ckks", 10, 0.6, 6)])
def test_sites_in_any_sum(protocol: str, n: int, threshold: float, expected: int) -> None:
    assert sites_in_any_sum(SecureSettings(protocol, threshold=threshold), n) == expected
