"""A hub killed in the middle of a secure round, in process: the round's protocol runs again
as a new attempt with fresh keys, each site re-enters the update it already trained (no second
training, no second privacy charge), and the hub can never open the round's sum over two
different sets of sites. Also the survivor threshold (audit F5): a 3-site study with
``min_completed = 2`` finishes a round when one site drops out, and contradictory thresholds
are refused when the study is configured.

The "hub" is the real round engine over the in-memory transport; its death is an exception
raised after a step's tasks reached the sites (they computed and answered, the hub never read
the answers), and its restart a new engine from the round-1 model, as the hub service builds
one from its checkpoint. The sites (executors, secure sessions, ledgers) live on, as node
processes do.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedcare.config import parse_config, secure_round_problems
from fedcare.core.dataset import TaskType
from fedcare.core.errors import ConfigError, ProtocolError
from fedcare.core.learning import FitResult
from fedcare.core.messages import Task, TaskKind, TrainConfig, first_attempt_id, task_attempt
from fedcare.core.params import Parameters
from fedcare.core.wire import peek_header
from fedcare.engine.executor import SiteExecutor
from fedcare.engine.history import History
from fedcare.engine.privacy import SitePrivacy
from fedcare.engine.round_engine import EngineSettings, RoundEngine, RoundFailed
from fedcare.engine.secure import PROTOCOL_AUX, SecureAggregator, SecureSettings, SecureSite
from fedcare.learners.torch_learner import TorchLearner
from fedcare.privacy.dp.ledger import PrivacyLedger, SitePrivacyPolicy
from fedcare.privacy.dp.spec import Mechanism, PrivacySpec
from fedcare.privacy.secagg.config import survivor_threshold
from fedcare.strategies import FedAvg, SamplingOptions
from fedcare.transport.base import Outgoing, Received
from fedcare.transport.inmemory import InMemoryTransport
from tests.unit.helpers import ledger_key, make_sites

TRAIN = TrainConfig(local_epochs=1, batch_size=8, lr=0.3)
NAMES = ["site-1", "site-2", "site-3"]


class _Killed(Exception):
    """The hub process died (kill -9): nothing after this point of the round ran."""


class _CountingLearner:
    """A real learner that counts its trainings (what a second training would show)."""

    def __init__(self) -> None:
        self.inner = TorchLearner.from_zoo("mlp", (5,), 1, TaskType.BINARY, {"hidden": [6]},
                                           seed=0)
        self.name = self.inner.name
        self.fits = 0

    def initial_parameters(self) -> Parameters:
        return self.inner.initial_parameters()

    def fit(self, parameters: Parameters, x: np.ndarray, y: np.ndarray, config: TrainConfig,
            *, seed: int, correction: Parameters | None = None) -> FitResult:
        self.fits += 1
        return self.inner.fit(parameters, x, y, config, seed=seed, correction=correction)

    def evaluate(self, parameters: Parameters, x: np.ndarray, y: np.ndarray
                 ) -> dict[str, float]:
        return self.inner.evaluate(parameters, x, y)


class _HubThatDies:
    """The hub's transport: the chosen step's tasks reach the sites (they answer), then the
    hub dies before reading a reply. ``drop`` makes sites fail chosen (round, kind) steps."""

    def __init__(self, inner: InMemoryTransport, die_at: tuple[int, TaskKind] | None) -> None:
        self.inner, self.die_at = inner, die_at

    def send(self, out: Outgoing) -> dict[str, Future[Received]]:
        futures = self.inner.send(out)
        if self.die_at == (out.round, out.kind):
            raise _Killed(f"hub killed during round {out.round} {out.kind.value}")
        return futures

    def close(self) -> None:
        self.inner.close()


class _Federation:
    """Three sites that outlive any number of hubs (their nodes keep running)."""

    def __init__(self, tmp_path: Path, protocol: str, he: tuple[bytes, bytes] | None = None,
                 *, dp: bool = False,
                 drop: Callable[[str, int, TaskKind], bool] | None = None) -> None:
        self.protocol = protocol
        self.secret, self.public = he or (None, None)
        self.settings = SecureSettings(protocol, he_context=self.secret, min_completed=2)
        self.spec = (PrivacySpec(Mechanism.DP_FEDAVG_DISTRIBUTED, clip=1.0,
                                 noise_multiplier=1.0, delta=1e-5) if dp else None)
        self.tmp_path = tmp_path
        self.sites = {s.name: s for s in make_sites(n_sites=3, rows=40)}
        self.learners = {n: _CountingLearner() for n in NAMES}
        self.ledgers = {n: PrivacyLedger(tmp_path / f"{n}.jsonl", SitePrivacyPolicy(50.0, 1e-5),
                                         key=ledger_key()) for n in NAMES}
        self.executors = {n: self.node(n) for n in NAMES}
        self.drop = drop
        self.initial = self.learners[NAMES[0]].initial_parameters()

    def node(self, name: str) -> SiteExecutor:
        """A (re)started node: new executor and secure state, the same ledger file."""
        return SiteExecutor(self.sites[name], self.learners[name], site_index=NAMES.index(name),
                            expected=self.initial_spec(),
                            secure=SecureSite(name, self.settings, NAMES),
                            privacy=SitePrivacy(self.spec, self.ledgers[name], 40,
                                                study_sites=3, secure_threshold=None,
                                                min_completed=2))

    def initial_spec(self) -> Any:
        return self.learners[NAMES[0]].initial_parameters().spec

    def _handler(self, name: str) -> Callable[[bytes], bytes]:
        def handle(payload: bytes) -> bytes:
            head = peek_header(payload)
            if self.drop is not None and self.drop(name, head["round"], TaskKind(head["kind"])):
                raise ConnectionError(f"{name} went away")
            return self.executors[name].handle(payload)
        return handle

    def hub(self, parameters: Parameters, *, attempt: int = 1,
            die_at: tuple[int, TaskKind] | None = None) -> RoundEngine:
        """A hub process: a fresh engine on ``parameters`` (its last checkpoint); a restarted
        hub's store says which protocol attempt a round is at."""
        transport = _HubThatDies(InMemoryTransport({n: self._handler(n) for n in NAMES}),
                                 die_at)
        privacy = None
        if self.spec is not None:
            from fedcare.engine.privacy import HubPrivacy

            privacy = HubPrivacy(self.spec, 3)
        engine = RoundEngine(EngineSettings(study="sec", seed=3, train=TRAIN),
                             FedAvg(SamplingOptions(min_completed=2)), transport, NAMES,
                             parameters, History(study="sec"),
                             secure=SecureAggregator(self.settings, self.public,
                                                     attempts=lambda r: attempt),
                             privacy=privacy)
        engine.strategy.initialize(parameters)
        return engine

    def fits(self) -> dict[str, int]:
        return {n: learner.fits for n, learner in self.learners.items()}

    def ledger_rounds(self, name: str) -> list[tuple[int, str]]:
        return [(e.round, e.task_id) for e in self.ledgers[name].entries()]


@pytest.fixture(scope="module")
def he_contexts() -> tuple[bytes, bytes]:
    from fedcare.privacy.he import create_federation_context

    return create_federation_context()


def _uninterrupted(tmp_path: Path, protocol: str, he: tuple[bytes, bytes] | None,
                   rounds: int = 3) -> Parameters:
    fed = _Federation(tmp_path / "ref", protocol, he)
    hub = fed.hub(fed.initial)
    for r in range(1, rounds + 1):
        hub.run_round(r)
    return hub.parameters


@pytest.mark.parametrize("protocol,step", [
    ("secagg", TaskKind.FIT), ("secagg", TaskKind.SECAGG_SHARE),
    ("secagg", TaskKind.SECAGG_MASK), ("secagg", TaskKind.SECAGG_UNMASK),
    ("secagg+", TaskKind.SECAGG_MASK), ("ckks", TaskKind.FIT), ("ckks", TaskKind.HE_DECRYPT),
])
def test_a_hub_killed_during_a_secure_step_resumes_the_round_as_if_never_interrupted(
        tmp_path: Path, protocol: str, step: TaskKind, he_contexts: tuple[bytes, bytes]
) -> None:
    (tmp_path / "ref").mkdir()
    he = he_contexts if protocol == "ckks" else None
    fed = _Federation(tmp_path, protocol, he)
    first = fed.hub(fed.initial, die_at=(2, step))
    first.run_round(1)
    checkpoint = first.parameters
    with pytest.raises(_Killed):
        first.run_round(2)

    restarted = fed.hub(checkpoint, attempt=2)  # the store says round 2's protocol had begun
    rec = restarted.run_round(2)
    restarted.run_round(3)

    assert rec.sites_completed == NAMES, rec.sites_failed
    # each node trained each round once and its ledger has one entry per round, named by the
    # round's fit task (every attempt at the protocol is one task to the ledger)
    assert fed.fits() == dict.fromkeys(NAMES, 3)
    for n in NAMES:
        assert fed.ledger_rounds(n) == [(r, f"sec/r{r}/fit/{n}") for r in (1, 2, 3)]
    reference = _uninterrupted(tmp_path, protocol, he)
    for k, v in reference.items():
        if protocol == "ckks":  # fresh encryptions: CKKS's approximation error differs
            np.testing.assert_allclose(restarted.parameters[k], v, atol=1e-4, err_msg=k)
        else:  # masks cancel exactly: the same sum, bit for bit
            np.testing.assert_array_equal(restarted.parameters[k], v, err_msg=k)


def test_the_new_attempt_has_its_own_tasks_and_fresh_keys_and_the_old_one_is_refused(
        tmp_path: Path) -> None:
    seen: dict[str, bytes] = {}
    fed = _Federation(tmp_path, "secagg")

    def spying(engine: RoundEngine) -> RoundEngine:
        def spy(name: str) -> Callable[[bytes], bytes]:
            inner = fed._handler(name)

            def handle(payload: bytes) -> bytes:
                seen[str(peek_header(payload)["task_id"])] = payload
                return inner(payload)
            return handle
        engine.transport.inner = InMemoryTransport(  # type: ignore[attr-defined]
            {n: spy(n) for n in NAMES})
        return engine

    with pytest.raises(_Killed):
        spying(fed.hub(fed.initial, die_at=(1, TaskKind.SECAGG_SHARE))).run_round(1)
    site = fed.executors["site-1"].secure
    assert site is not None and site._answer is not None
    keys_1 = {k: v.copy() for k, v in site._answer["sp"].items()}
    spying(fed.hub(fed.initial, attempt=2)).run_round(1)

    assert {"sec/r1/fit/site-1", "sec/r1/sa_share/site-1", "sec/r1/a2/fit/site-1",
            "sec/r1/a2/sa_share/site-1", "sec/r1/a2/sa_mask/site-1",
            "sec/r1/a2/sa_unmask/site-1"} <= set(seen)
    assert task_attempt("sec/r1/a2/sa_share/site-1") == 2
    assert first_attempt_id("sec/r1/a2/fit/site-1") == "sec/r1/fit/site-1"
    assert fed.fits() == dict.fromkeys(NAMES, 1)
    # attempt 2 advertised new public keys (its secrets are fresh)
    keys_2 = site._answer["sp"]
    assert any(not np.array_equal(keys_1[k], keys_2[k]) for k in keys_1)
    # a step of the first attempt delivered late is refused, and so is its fit asked again
    from fedcare.core.wire import decode_task

    with pytest.raises(ProtocolError, match="no secure-aggregation session"):
        site.step(decode_task(seen["sec/r1/sa_share/site-1"]))
    with pytest.raises(ProtocolError, match="stale"):
        site.check(decode_task(seen["sec/r1/fit/site-1"], fed.initial_spec()))


def test_under_distributed_dp_the_stored_noised_update_enters_again_and_is_charged_once(
        tmp_path: Path) -> None:
    fed = _Federation(tmp_path, "secagg", dp=True)
    first = fed.hub(fed.initial, die_at=(2, TaskKind.SECAGG_MASK))
    first.run_round(1)
    checkpoint = first.parameters
    with pytest.raises(_Killed):
        first.run_round(2)
    stored = {n: fed.executors[n].secure.entered(2).copy() for n in NAMES}

    restarted = fed.hub(checkpoint, attempt=2)
    rec = restarted.run_round(2)

    assert rec.sites_completed == NAMES
    assert fed.fits() == dict.fromkeys(NAMES, 2)
    for n in NAMES:
        entries = fed.ledgers[n].entries()
        assert [(e.round, e.mechanism) for e in entries] == [
            (1, Mechanism.DP_FEDAVG_DISTRIBUTED), (2, Mechanism.DP_FEDAVG_DISTRIBUTED)]
    # the new model is exactly the sum of what the sites noised before the kill
    total = sum(stored.values())
    expected = checkpoint.flatten("float64") + total[:-1] / total[-1]
    np.testing.assert_allclose(restarted.parameters.flatten("float64"), expected, atol=1e-6)


def test_a_node_that_lost_its_dp_update_sits_the_round_out_instead_of_charging_again(
        tmp_path: Path) -> None:
    fed = _Federation(tmp_path, "secagg", dp=True)
    first = fed.hub(fed.initial, die_at=(2, TaskKind.SECAGG_MASK))
    first.run_round(1)
    checkpoint = first.parameters
    with pytest.raises(_Killed):
        first.run_round(2)
    fed.executors["site-3"] = fed.node("site-3")  # site-3's node restarted too
    before = fed.ledgers["site-3"].path.read_bytes()

    rec = fed.hub(checkpoint, attempt=2).run_round(2)

    assert rec.sites_completed == ["site-1", "site-2"]  # t = 2 of 3: the round goes on
    why = rec.sites_failed["site-3"]
    assert "PrivacyBudgetError" in why and "already charged" in why, why
    assert fed.ledgers["site-3"].path.read_bytes() == before  # nothing written
    assert fed.fits()["site-3"] == 2  # it had trained round 2 once, before its restart


def test_a_later_attempt_never_opens_the_rounds_sum_over_another_set_of_sites(
        tmp_path: Path) -> None:
    """Killed after every site revealed its unmask shares for {1, 2, 3}: the hub may have
    learnt that sum. If site-3 then drops out of the new attempt, sites 1 and 2 refuse to
    reveal the sum over {1, 2} (the difference would be site-3's update): the round fails."""
    gone: set[str] = set()
    fed = _Federation(tmp_path, "secagg",
                      drop=lambda n, r, k: n in gone and k is TaskKind.SECAGG_MASK)
    first = fed.hub(fed.initial, die_at=(1, TaskKind.SECAGG_UNMASK))
    with pytest.raises(_Killed):
        first.run_round(1)
    gone.add("site-3")
    with pytest.raises(RoundFailed, match="refusing to reveal"):
        fed.hub(fed.initial, attempt=2).run_round(1)
    assert fed.fits() == dict.fromkeys(NAMES, 1)


def test_a_ckks_site_decrypts_a_rounds_sum_over_one_set_only(
        tmp_path: Path, he_contexts: tuple[bytes, bytes]) -> None:
    secret, _ = he_contexts
    settings = SecureSettings("ckks", he_context=secret)
    sites = {n: SecureSite(n, settings, NAMES) for n in NAMES}  # simulated identities

    def task(site: str, kind: TaskKind, attempt: int, aux: dict[str, Parameters] | None = None,
             **meta: Any) -> Task:
        return Task(task_id=f"x/r1/a{attempt}/{kind.value}/{site}", study="x", round=1,
                    site=site, kind=kind, parameters=Parameters({}), aux=aux or {},
                    meta={"secure": "ckks", "participants": NAMES, "attempt": attempt, **meta})

    def signed(attempt: int, vectors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        answers = {n: sites[n].start(task(n, TaskKind.FIT, attempt), v)[PROTOCOL_AUX]
                   for n, v in vectors.items()}
        return {f"{k}.{n}": np.asarray(a[k]) for n, a in answers.items() for k in a}

    def decrypt(attempt: int, payload: dict[str, np.ndarray], included: list[str]) -> None:
        aux = {PROTOCOL_AUX: Parameters(payload, allow_integer=True)}
        sites["site-1"].step(task("site-1", TaskKind.HE_DECRYPT, attempt, aux,
                                  included=included))

    vectors = {n: np.arange(4.0) + i for i, n in enumerate(NAMES)}
    decrypt(1, signed(1, vectors), NAMES)
    again = signed(2, vectors)  # the hub restarted: a new attempt, fresh encryptions
    two = [n for n in NAMES if n != "site-3"]
    with pytest.raises(ProtocolError, match="refusing to reveal"):
        decrypt(2, {k: v for k, v in again.items() if not k.endswith("site-3")}, two)
    decrypt(2, again, NAMES)  # the same set: nothing new
    with pytest.raises(ProtocolError, match="one update per round"):
        sites["site-1"].start(task("site-1", TaskKind.FIT, 3), vectors["site-1"] + 1)


# -- F5: the survivor threshold -----------------------------------------------------------------
@pytest.mark.parametrize("n,fraction,min_completed,t", [
    (3, None, 2, 2), (3, None, 1, 2), (3, 0.67, 1, 3), (4, None, 1, 3), (5, None, 4, 4),
    (5, 0.6, 1, 3), (2, None, 1, 2), (10, 0.7, 2, 7), (3, None, 5, 3),
])
def test_survivor_threshold(n: int, fraction: float | None, min_completed: int, t: int) -> None:
    got = survivor_threshold(n, fraction, min_completed)
    assert got == t
    assert 2 * got > n  # always a strict majority


def _cfg(sites: int, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {"data": {"source": "builtin", "sites": sites},
                           "model": {"name": "logreg"},
                           "secure_aggregation": {"protocol": "secagg"},
                           "baselines": {"local": False, "centralized": False}}
    for k, v in over.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    return cfg


@pytest.mark.parametrize("sites,over,keys", [
    (3, {"secure_aggregation": {"threshold": 0.67}, "strategy": {"name": "fedavg",
                                                                  "min_completed": 2}},
     ["secure_aggregation.threshold", "strategy.min_completed"]),
    (5, {"strategy": {"name": "fedavg", "min_completed": 2}}, ["strategy.min_completed"]),
    (3, {"strategy": {"name": "fedavg", "min_completed": 4}}, ["strategy.min_completed"]),
])
def test_a_study_whose_threshold_and_min_completed_contradict_is_refused(
        sites: int, over: dict[str, Any], keys: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_cfg(sites, **over))
    for key in keys:
        assert f"'{key}'" in str(err.value), str(err.value)


def test_the_demo_shape_is_accepted_and_survives_one_dropout() -> None:
    from fedcare.demo.run import study_config

    demo = parse_config(study_config(["a", "b"], "y", "0" * 64))
    assert secure_round_problems(demo, 3) == []
    settings = SecureSettings.of(demo)
    assert settings is not None and settings.survivors_needed(3) == 2
    # an explicit threshold with the default min_completed is still accepted (as before)
    parse_config(_cfg(3, secure_aggregation={"threshold": 0.67}))


def test_one_of_three_sites_dying_during_sa_mask_leaves_a_round_of_two(tmp_path: Path) -> None:
    """Audit F5 (expE3 study X) in process: 3 sites, secagg, min_completed 2; site-3 dies in
    round 2's sa_mask and stays dead. The round completes with 2 sites, the study goes on."""
    fed = _Federation(tmp_path, "secagg",
                      drop=lambda n, r, k: n == "site-3" and (r > 2 or (r == 2 and k in (
                          TaskKind.SECAGG_MASK, TaskKind.SECAGG_UNMASK))))
    hub = fed.hub(fed.initial)
    records = [hub.run_round(r) for r in (1, 2, 3)]
    assert records[0].sites_completed == NAMES
    assert records[1].sites_completed == ["site-1", "site-2"]
    assert "sa_mask" in records[1].sites_failed["site-3"]
    assert records[2].sites_completed == ["site-1", "site-2"]


def test_the_ledger_charges_a_task_once(tmp_path: Path) -> None:
    from fedcare.privacy.dp.errors import PrivacyBudgetError
    from fedcare.privacy.dp.ledger import LedgerEntry

    ledger = PrivacyLedger(tmp_path / "l.jsonl", SitePrivacyPolicy(50.0, 1e-5), key=ledger_key())
    dp = LedgerEntry("s", 2, "s/r2/fit/a", "dp_fedavg_distributed", 1.0, 1.0, 1, 1e-5)
    stats = LedgerEntry("s", 1, "s/r1/stats/a", "none", 0.0, 1.0, 0, 1e-5)
    spent = ledger.charge(dp)
    ledger.charge(stats)
    size = ledger.path.stat().st_size
    with pytest.raises(PrivacyBudgetError, match="already charged"):
        ledger.charge(dp)
    assert ledger.charge(stats) == pytest.approx(spent)  # recorded once, not twice
    assert ledger.path.stat().st_size == size and ledger.verify() == []
    # the same task id in another study is another task
    ledger.charge(LedgerEntry("t", 2, "s/r2/fit/a", "dp_fedavg_distributed", 1.0, 1.0, 1,
                              1e-5))
    assert len(ledger.entries()) == 3
