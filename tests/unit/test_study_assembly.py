"""One study assembly for the simulation and the hub (architecture review P2): the same
history keys, and one checkpoint record restored through one path whichever sink kept it."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedcare.config import parse_config
from fedcare.core.errors import ConfigError, FedcareError
from fedcare.core.params import Parameters
from fedcare.core.wire import save_parameters
from fedcare.engine.checkpoints import Checkpoint, CheckpointSink, CheckpointStore
from fedcare.engine.history import History, RoundRecord
from fedcare.engine.round_engine import RoundEngine
from fedcare.hub.checkpoints import BlobCheckpoints
from fedcare.hub.service import HubService, NeverRevoked
from fedcare.hub.store import BlobStore, Database, StudyRepo, StudyStatus
from fedcare.sim.runner import _Run
from fedcare.transport.inmemory import InMemoryTransport

SIM = {"study": {"name": "assembly", "seed": 3, "rounds": 4},
       "data": {"source": "synthetic", "sites": 3, "rows_per_site": 60, "n_features": 5},
       "model": {"name": "logreg"}, "strategy": {"name": "scaffold"},
       "train": {"local_epochs": 1, "batch_size": 16, "lr": 0.1, "optimizer": "sgd",
                 "momentum": 0.0},
       "baselines": {"local": False, "centralized": False}, "run": {"workers": 1}}
HUB = {"study": {"name": "assembly", "rounds": 4},
       "data": {"source": "federation", "dataset": "d", "label": "y",
                "features": ["a", "b", "c"], "standardize": False}}
#: History keys the reports, the CLI, tracking and the tests read (besides the ones the
#: engine adds while running: privacy, normalizer, comparison, resumed_from_round).
READ = {"fedcare_version", "mode", "study_id", "created", "config_hash", "task",
        "primary_metric", "higher_is_better", "strategy", "model", "rounds_planned",
        "workers", "parameters", "example_bounds", "dp_check", "config"}


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubService]:
    svc = HubService(tmp_path / "hub", revocation=NeverRevoked())
    try:
        for site in ("a", "b"):
            svc.hello(site, "01", "x", [{"name": "d", "rows": 100}], "s")
        yield svc
    finally:
        svc.stop()
        svc.db.dispose()


def _run(**over: Any) -> _Run:
    run = _Run(parse_config({**SIM, **over}), None, None, False, False)
    run.prepare()
    return run


def test_simulation_and_hub_histories_have_the_same_keys(hub: HubService) -> None:
    doc = hub.submit_study(HUB)
    engine, start = hub.runner._engine(doc["study_id"], None)  # type: ignore[arg-type]

    sim = _run().plan.history.meta
    net = engine.history.meta

    assert start == 1
    assert set(sim) == set(net) == READ
    assert (sim["mode"], net["mode"]) == ("simulation", "network")
    assert (sim["study_id"], net["study_id"]) == (None, doc["study_id"])
    assert sim["workers"] == 1 and net["workers"] is None
    assert sim["example_bounds"] == {f"site-{i}": 60 for i in (1, 2, 3)}
    assert set(net["example_bounds"]) == {"a", "b"}
    assert sim["parameters"] == 6 and net["parameters"] == 4  # logreg: features + bias


class _Both:
    """Saves every round into both sinks."""

    def __init__(self, *sinks: CheckpointSink) -> None:
        self.sinks = sinks

    def save(self, round_: int, parameters: Parameters, strategy_state: Mapping[str, Any],
             history: History) -> None:
        for sink in self.sinks:
            sink.save(round_, parameters, strategy_state, history)

    def latest(self) -> Checkpoint | None:
        return self.sinks[0].latest()


def _blob_sink(tmp_path: Path, sites: list[str]) -> BlobCheckpoints:
    db = Database(f"sqlite:///{tmp_path / 'hub.db'}")
    db.migrate()
    with db.session() as s:
        repo = StudyRepo(s)
        study = repo.create("assembly", {}, "0" * 64, sites, 4)
        repo.set_status(study.id, StudyStatus.RUNNING)
        study_id = study.id
    return BlobCheckpoints(BlobStore(tmp_path / "blobs"), db, study_id)


def _state(engine: RoundEngine) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list]:
    # (A round's "seconds" in memory also count its checkpoint, written before it is set.)
    return (dict(engine.parameters), engine.strategy.state(),
            [{k: v for k, v in asdict(r).items() if k != "seconds"}
             for r in engine.history.rounds])


def test_a_checkpoint_from_either_sink_restores_the_same_engine(tmp_path: Path) -> None:
    run = _run()
    transport = InMemoryTransport({n: e.handle for n, e in run._executors(run.sites).items()})
    files = CheckpointStore(tmp_path / "checkpoints")
    blobs = _blob_sink(tmp_path, [s.name for s in run.sites])
    first = run.plan.engine(transport, checkpoints=_Both(files, blobs))
    first.strategy.initialize(first.parameters)
    first.run_round(1)
    first.run_round(2)
    saved = _state(first)
    first.checkpoints = None  # the run "stops" after round 2; round 3 is the reference
    first.run_round(3)
    uninterrupted = dict(first.parameters)

    resumed = {}
    for name, sink in (("files", files), ("blobs", blobs)):
        checkpoint = sink.latest()
        assert checkpoint is not None and checkpoint.round == 2
        engine = _run().plan.engine(transport)  # a fresh process's engine
        assert engine.resume(checkpoint) == 3
        resumed[name] = engine

    for engine in resumed.values():
        params, strategy_state, rounds = _state(engine)
        assert params.keys() == saved[0].keys() and strategy_state.keys() == saved[1].keys()
        for k in params:
            assert params[k].dtype == saved[0][k].dtype
            assert params[k].tobytes() == saved[0][k].tobytes()  # bit-identical
        for k in strategy_state:
            assert strategy_state[k].tobytes() == saved[1][k].tobytes()
        assert rounds == saved[2]
        assert engine.history.meta["resumed_from_round"] == 2
        engine.run_round(3)
        for k, v in uninterrupted.items():
            assert engine.parameters[k].tobytes() == v.tobytes()


def test_a_checkpoint_written_by_an_earlier_hub_still_resumes(tmp_path: Path) -> None:
    """The hub's format is unchanged: two blobs and the study row, exactly as the hub wrote
    them before the sinks were one protocol (a history without the newer keys included)."""
    run = _run()
    sink = _blob_sink(tmp_path, [s.name for s in run.sites])
    params = run.plan.initial
    state = {"c/weight": np.full((1, 5), 0.25, np.float32), "c/bias": np.zeros(1, np.float32)}
    history = History(study="assembly", meta={"config_hash": run.hash, "task": "binary",
                                              "mode": "network"})
    history.rounds.append(RoundRecord(1))
    model_sha = sink.blobs.put(save_parameters(params))
    state_sha = sink.blobs.put(save_parameters(Parameters({}), extra=state, metadata={
        "history": json.dumps(history.to_dict())}))
    with sink.db.session() as s:
        StudyRepo(s).complete_round(sink.study_id, 1, asdict(history.rounds[0]), model_sha,
                                    state_sha)

    checkpoint = sink.latest()
    assert checkpoint is not None
    engine = run.plan.engine(InMemoryTransport({}))
    start = engine.resume(checkpoint)

    assert start == 2 and [r.round for r in engine.history.rounds] == [1]
    assert engine.history.meta["mode"] == "network"  # the saved keys win...
    assert engine.history.meta["rounds_planned"] == 4  # ...and the newer ones are filled in
    assert engine.strategy.state()["c/weight"].tolist() == [[0.25] * 5]


def test_resume_refuses_another_configuration_or_model_layout(tmp_path: Path) -> None:
    run = _run()
    store = CheckpointStore(tmp_path)
    history = run.plan.history
    store.save(1, run.plan.initial, {}, history)
    checkpoint = store.latest()
    assert checkpoint is not None

    with pytest.raises(ConfigError, match="configuration changed"):
        _run(train={**SIM["train"], "lr": 0.2}).plan.engine(InMemoryTransport({})).resume(
            checkpoint)
    other = Checkpoint(1, Parameters({"w": np.zeros(2, np.float32)}), {}, checkpoint.history)
    with pytest.raises(FedcareError, match="layout"):
        _run().plan.engine(InMemoryTransport({})).resume(other)


def test_the_file_store_saves_every_nth_round_only(tmp_path: Path) -> None:
    run = _run()
    store = CheckpointStore(tmp_path, every=2)
    for r in (1, 2, 3):
        store.save(r, run.plan.initial, {}, run.plan.history)

    assert store.rounds() == [2]
    assert CheckpointStore(tmp_path, every=0).save(4, run.plan.initial, {},
                                                   run.plan.history) is None
