"""Local-only baselines as a site task (issue 14, item 14): a site trains the study's initial
model alone and replies with held-out metrics only; it refuses when its own settings say so;
the hub's store accepts the new task kind (migration 0006); studies opt in with
``[baselines] local_at_sites``; the report says per site whether joining helped."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from fedcare.config import content_hash, parse_config
from fedcare.core.dataset import SiteData, TaskType
from fedcare.core.errors import ConfigError, FedcareError
from fedcare.core.messages import ErrorReply, Task, TaskKind, TrainConfig, Update
from fedcare.core.params import Parameters
from fedcare.core.seeds import site_round_seed
from fedcare.core.wire import decode_reply, decode_task, encode_task
from fedcare.engine.executor import NO_LOCAL_BASELINE, LocalBaseline, SiteExecutor
from fedcare.engine.history import History
from fedcare.engine.privacy import SitePrivacy
from fedcare.engine.round_engine import EngineSettings, RoundEngine
from fedcare.engine.study import site_executor
from fedcare.hub.store import Database, NewTask, TaskRepo, upgrade
from fedcare.hub.store.database import create_hub_engine, downgrade
from fedcare.learners.torch_learner import TorchLearner
from fedcare.node.agent import NodeAgent
from fedcare.node.local_config import load_node_data
from fedcare.reporting import render_report
from fedcare.reporting.summary import comparisons, site_comparisons
from fedcare.sim.runner import simulate
from fedcare.strategies.fedavg import FedAvg
from fedcare.transport.inmemory import InMemoryTransport
from tests.unit.helpers import insert_study_at_old_schema, make_sites

TRAIN = TrainConfig(local_epochs=2, batch_size=8, lr=0.1)
SHA = hashlib.sha256(b"model").hexdigest()


def _learner(site: SiteData) -> TorchLearner:
    return TorchLearner.from_zoo("logreg", site.input_shape, 1, TaskType.BINARY, {}, seed=0)


def _executor(site: SiteData, local: LocalBaseline | None, index: int = 0,
              privacy: SitePrivacy | None = None) -> SiteExecutor:
    learner = _learner(site)
    return SiteExecutor(site, learner, site_index=index,
                        expected=learner.initial_parameters().spec, local_baseline=local,
                        privacy=privacy)


def _task(site: str, model: Parameters, strategy: str = "fedavg") -> Task:
    return Task(f"s/r4/local_baseline/{site}", "s", 4, site, TaskKind.LOCAL_BASELINE, model,
                train=TRAIN, seed=7, evaluate=False, strategy=strategy)


def _reply(ex: SiteExecutor, task: Task) -> Update | ErrorReply:
    return decode_reply(ex.handle(encode_task(task)), Parameters({}).spec, {})


class _NoLedgerCalls:
    """A ledger that fails any use: the local baseline must charge nothing."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the ledger was used ({name})")


def test_a_site_trains_alone_for_the_studys_rounds_and_sends_only_metrics() -> None:
    site = make_sites(n_sites=2, rows=40)[1]
    ex = _executor(site, LocalBaseline(rounds=3), index=1,
                   privacy=SitePrivacy(None, _NoLedgerCalls(), 40))
    initial = ex.learner.initial_parameters()

    reply = _reply(ex, _task(site.name, initial))

    assert isinstance(reply, Update), reply
    assert not reply.parameters and not reply.aux and reply.num_examples == 0
    assert reply.num_eval_examples == len(site.y_test)
    # the same model a site gets from 3 rounds of its own fits, seeded as in the study
    params = initial
    for r in (1, 2, 3):
        params = ex.learner.fit(params, site.x_train, site.y_train, TRAIN,
                                seed=site_round_seed(7, r, 1)).parameters
    assert reply.eval_metrics == pytest.approx(ex.learner.evaluate(params, site.x_test,
                                                                   site.y_test))
    assert "local_baseline:" in reply.provenance[0]


def test_a_site_refuses_when_its_study_or_its_own_settings_do_not_allow_it() -> None:
    site = make_sites(n_sites=1)[0]
    model = _learner(site).initial_parameters()

    unasked = _reply(_executor(site, None), _task(site.name, model))
    forbidden = _reply(_executor(site, LocalBaseline(2, refusal="site says no")),
                       _task(site.name, model))
    other_strategy = _reply(_executor(site, LocalBaseline(2)),
                            _task(site.name, model, strategy="scaffold"))

    assert isinstance(unasked, ErrorReply) and unasked.error_type == "Refused"
    assert unasked.message == NO_LOCAL_BASELINE
    assert isinstance(forbidden, ErrorReply) and forbidden.message == "site says no"
    assert isinstance(other_strategy, ErrorReply) and "scaffold" in other_strategy.message


def test_a_local_baseline_task_is_validated_on_the_wire() -> None:
    site = make_sites(n_sites=1)[0]
    model = _learner(site).initial_parameters()

    task = decode_task(encode_task(_task(site.name, model)), model.spec)

    assert task.kind is TaskKind.LOCAL_BASELINE
    with pytest.raises(FedcareError, match="rounds"):
        LocalBaseline(0)
    name = next(iter(model))
    wrong = Parameters({**model, name: np.zeros((*model[name].shape, 2), np.float32)})
    with pytest.raises(FedcareError):  # a model of another layout than the site's
        decode_task(encode_task(_task(site.name, wrong)), model.spec)


def test_the_round_engine_collects_metrics_and_refusals_without_failing() -> None:
    sites = make_sites(n_sites=3, rows=30)
    executors = {s.name: _executor(s, LocalBaseline(2) if s.name != "site-3" else
                                   LocalBaseline(2, refusal="policy"), index=i)
                 for i, s in enumerate(sites)}
    initial = executors["site-1"].learner.initial_parameters()
    engine = RoundEngine(EngineSettings("s", 7, TRAIN), FedAvg(),
                         InMemoryTransport({n: e.handle for n, e in executors.items()}),
                         [s.name for s in sites], initial, History(study="s"))

    block = engine.local_baselines(initial, TRAIN, rounds=2)

    assert set(block["site_metrics"]) == {"site-1", "site-2"}
    assert block["sites_failed"] == {"site-3": "Refused: policy"}
    assert "accuracy" in block["global_metrics"]


def _study(**baselines: Any) -> dict[str, Any]:
    return {"study": {"name": "lb", "seed": 0, "rounds": 2},
            "data": {"source": "federation", "dataset": "d", "label": "y",
                     "features": ["a", "b"]},
            "baselines": baselines}


def test_the_opt_in_is_off_by_default_and_hashes_as_before() -> None:
    plain = parse_config(_study())
    asked = parse_config(_study(local_at_sites=True))

    assert plain.baselines.local_at_sites is False
    assert content_hash(parse_config(_study(local_at_sites=False))) == content_hash(plain)
    assert content_hash(asked) != content_hash(plain)
    sim = {"study": {"name": "x", "rounds": 1},
           "data": {"source": "builtin", "dataset": "breast_cancer", "sites": 2},
           "baselines": {"local_at_sites": True}}
    with pytest.raises(ConfigError, match="local_at_sites"):
        parse_config(sim)


def test_the_node_config_says_whether_the_site_trains_local_baselines(tmp_path: Path) -> None:
    conf = tmp_path / "node.toml"
    conf.write_text('[datasets.d]\npath = "d.csv"\n')
    assert load_node_data(conf).local_baselines is True
    conf.write_text('[datasets.d]\npath = "d.csv"\n[baselines]\nlocal = false\n')
    assert load_node_data(conf).local_baselines is False
    conf.write_text('[datasets.d]\npath = "d.csv"\n[baselines]\nlocal = false\nother = 1\n')
    with pytest.raises(ConfigError, match="other"):
        load_node_data(conf)


def _agent(local: bool, require_dp: bool | None) -> NodeAgent:
    agent = object.__new__(NodeAgent)
    agent.site = "alpha"
    agent.data = SimpleNamespace(local_baselines=local)  # type: ignore[assignment]
    agent.ledger = (None if require_dp is None else
                    SimpleNamespace(policy=SimpleNamespace(require_dp=require_dp)))
    return agent


def _node_baseline(agent: NodeAgent, study: dict[str, Any]) -> LocalBaseline | None:
    """The local-only baseline of the executor a node builds for ``study``."""
    cfg = parse_config(study)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 2)).astype(np.float32), np.arange(8) % 2
    data = SiteData("alpha", x, y, x, y, ("a", "b"), TaskType.BINARY, 2)
    return site_executor(cfg, data, 0, ["alpha"], local_baseline=cfg.baselines.local_at_sites,
                         baseline_refusal=agent._baseline_refusal()).local_baseline


def test_the_node_refuses_with_a_reason_when_its_settings_forbid_it() -> None:
    asked = _study(local_at_sites=True)

    assert _node_baseline(_agent(True, None), _study()) is None
    allowed = _node_baseline(_agent(True, False), asked)
    forbidden = _node_baseline(_agent(False, None), asked)
    strict = _node_baseline(_agent(True, True), asked)

    assert allowed is not None and allowed.refusal is None and allowed.rounds == 2
    assert forbidden is not None and "[baselines] local = false" in str(forbidden.refusal)
    assert strict is not None and "require_dp" in str(strict.refusal)


def test_simulation_trains_local_baselines_through_the_same_task() -> None:
    cfg = {"study": {"name": "sim-lb", "seed": 0, "rounds": 2},
           "data": {"source": "builtin", "dataset": "breast_cancer", "sites": 3},
           "model": {"name": "logreg"}, "run": {"workers": 1},
           "baselines": {"local": True, "centralized": False}}

    history = simulate(cfg).to_dict()

    local = history["baselines"]["local"]
    assert set(local["site_metrics"]) == {"site-1", "site-2", "site-3"}
    assert local["sites_failed"] == {}
    assert set(local["global_metrics"]) >= {"accuracy", "loss"}


def test_the_report_says_per_site_whether_joining_helped() -> None:
    history = {"primary_metric": "accuracy", "higher_is_better": True,
               "sites": [{"name": n} for n in ("a", "b", "c")],
               "final": {"site_metrics": {"a": {"accuracy": 0.9}, "b": {"accuracy": 0.7},
                                          "c": {"accuracy": 0.1}}},
               "baselines": {"local": {"site_metrics": {"a": {"accuracy": 0.8},
                                                        "b": {"accuracy": 0.75}},
                                       "sites_failed": {"c": "Refused: no"}}}}

    found = {c.site: c.text for c in site_comparisons(history)}

    assert found["a"] == "federated is 10.00 points better than its local-only model"
    assert found["b"] == "federated is 5.00 points worse than its local-only model"
    assert found["c"] == "no local-only model: Refused: no"
    # the mean over sites compares the sites that have a local-only model only (0.8 vs 0.775)
    assert comparisons(history)[0].federated == pytest.approx(0.8)
    assert "Did joining help?" in render_report(history)


def test_migration_0006_allows_the_kind_and_keeps_every_task_and_reply(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0005")
    old = Database(url)
    study_id = insert_study_at_old_schema(old, ["a"], 1, SHA)
    with old.session() as s:
        TaskRepo(s).create_many([NewTask(study_id, 1, "a", TaskKind.FIT, SHA)])
    with old.engine.begin() as conn:
        task_id = conn.exec_driver_sql("SELECT id FROM tasks").scalar()
        conn.exec_driver_sql("INSERT INTO replies (task_id, site, blob_sha, size, is_error, "
                             "received_at) VALUES (?, 'a', ?, 1, 0, '2026-01-01')",
                             (task_id, SHA))
    old.dispose()

    upgrade(url)
    db = Database(url)
    try:
        with db.session() as s:
            TaskRepo(s).create_many([NewTask(study_id, 2, "a", TaskKind.LOCAL_BASELINE, SHA)])
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM replies").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
        with pytest.raises(sa.exc.IntegrityError), db.session() as s:  # still checked
            s.execute(sa.text("UPDATE tasks SET kind = 'bogus'"))
    finally:
        db.dispose()

    engine = create_hub_engine(url)
    try:
        downgrade(engine, "0005")
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT kind FROM tasks").scalars().all() == ["fit"]
            assert conn.exec_driver_sql("SELECT count(*) FROM replies").scalar() == 1
    finally:
        engine.dispose()


def test_under_dp_sgd_the_site_trains_its_local_baseline_without_dp() -> None:
    study = _study(local_at_sites=True)
    study["data"]["standardize"] = False
    study = {**study, "model": {"name": "logreg"},
             "privacy": {"mode": "dp_sgd", "clip": 1.0, "noise_multiplier": 1.0, "delta": 1e-5}}

    lb = _node_baseline(_agent(True, False), study)

    assert lb is not None and lb.refusal is None
    assert isinstance(lb.learner, TorchLearner) and lb.learner.dp is None
