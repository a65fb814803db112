"""Per-site fixed test files (issue 14, item 7): ``[[data.site]] test_path`` in a study and
``test_path`` of a node's table dataset test a site on that file (temporal or external
validation) instead of a random split, and the history and report say which split each
site used."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fedcare
from fedcare.config import FederatedData, content_hash, load_config, parse_config
from fedcare.core.errors import DataError
from fedcare.core.messages import TrainConfig
from fedcare.engine.executor import SiteExecutor
from fedcare.engine.history import History
from fedcare.engine.learner_factory import ModelShape, make_learner
from fedcare.engine.round_engine import EngineSettings, RoundEngine
from fedcare.node.local_config import load_node_data
from fedcare.node.site_data import build_site_data
from fedcare.sim.sites import build_sites
from fedcare.strategies.fedavg import FedAvg
from fedcare.transport.inmemory import InMemoryTransport
from tests.unit.helpers import with_permissive_policy


def _table(path: Path, rows: int, seed: int, shift: float = 0.0) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.normal(shift, 1, size=(rows, 3))
    y = (x.sum(axis=1) + rng.normal(0, 0.3, rows) > 3 * shift).astype(int)
    pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": y}).to_csv(path, index=False)
    return path


STUDY = """
[study]
name = "temporal"
rounds = 2
[data]
source = "files"
label = "y"
test_fraction = 0.25
[[data.site]]
name = "early"
path = "early.csv"
test_path = "later.csv"
[[data.site]]
name = "other"
path = "other.csv"
[model]
name = "logreg"
[baselines]
local = false
centralized = false
"""


@pytest.fixture
def study(tmp_path: Path) -> Path:
    _table(tmp_path / "early.csv", 80, 1)
    _table(tmp_path / "later.csv", 30, 2, shift=0.5)
    _table(tmp_path / "other.csv", 60, 3)
    (tmp_path / "study.toml").write_text(STUDY)
    return tmp_path / "study.toml"


def test_a_site_with_a_test_file_is_tested_on_it_and_trains_on_all_its_rows(
        study: Path) -> None:
    cfg = load_config(study)

    early, other = build_sites(cfg.data, cfg.study.seed)

    later = pd.read_csv(study.parent / "later.csv")
    assert len(early.y_train) == 80 and len(early.y_test) == 30  # not a 25 % split
    np.testing.assert_array_equal(early.y_test, later["y"].to_numpy())
    assert len(other.y_train) + len(other.y_test) == 60 and len(other.y_test) == 15
    assert early.test_split == "fixed file later.csv"
    assert other.test_split == "random 25 % split"


def test_the_test_file_is_scaled_by_the_federations_training_statistics(study: Path) -> None:
    cfg = load_config(study)
    raw = build_sites(cfg.data.model_copy(update={"standardize": False}), cfg.study.seed)
    early = build_sites(cfg.data, cfg.study.seed)[0]

    train = np.concatenate([s.x_train for s in raw])  # the test file is not in the statistics
    mean, std = train.mean(axis=0), train.std(axis=0)

    np.testing.assert_allclose(early.x_test, (raw[0].x_test - mean) / std, atol=1e-5)


def test_history_and_report_say_which_split_each_site_used(study: Path,
                                                           tmp_path: Path) -> None:
    history = fedcare.simulate(load_config(study), output_dir=tmp_path / "run")

    splits = {s["name"]: s["test_split"] for s in history.sites}
    html = (tmp_path / "run" / "report.html").read_text()

    assert splits == {"early": "fixed file later.csv", "other": "random 25 % split"}
    assert "early: fixed file later.csv" in html and "other: random 25 % split" in html


def test_a_test_file_with_other_columns_is_refused(study: Path) -> None:
    pd.read_csv(study.parent / "later.csv").rename(columns={"c": "d"}).to_csv(
        study.parent / "later.csv", index=False)
    cfg = load_config(study)
    with pytest.raises(DataError, match="early"):
        build_sites(cfg.data, cfg.study.seed)


def test_a_missing_test_file_is_named(study: Path) -> None:
    (study.parent / "later.csv").unlink()
    cfg = load_config(study)
    with pytest.raises(DataError, match=r"later\.csv does not exist"):
        build_sites(cfg.data, cfg.study.seed)


def test_a_test_file_label_unseen_in_training_joins_the_label_coding(tmp_path: Path) -> None:
    for name, labels in (("a", ["no", "yes"]), ("t", ["no", "maybe"])):
        pd.DataFrame({"x": np.arange(40.0), "y": labels * 20}).to_csv(tmp_path / f"{name}.csv",
                                                                      index=False)
    cfg = parse_config({"data": {"source": "files", "label": "y", "site": [
        {"name": "s", "path": str(tmp_path / "a.csv"), "test_path": str(tmp_path / "t.csv")}]},
        "model": {"name": "logreg"}})

    (site,) = build_sites(cfg.data, 0)

    assert site.label_values == ("maybe", "no", "yes")


_FILES_STUDY = {"study": {"name": "temporal", "rounds": 2},
                "data": {"source": "files", "label": "y",
                         "site": [{"name": "early", "path": "early.csv"},
                                  {"name": "other", "path": "other.csv"}]},
                "model": {"name": "logreg"}}


def test_studies_without_test_files_keep_their_content_hash() -> None:
    """What sites approved stays valid: pinned from the code before test_path existed."""
    plain = parse_config(_FILES_STUDY)
    fixed = parse_config({**_FILES_STUDY, "data": {**_FILES_STUDY["data"], "site": [
        {"name": "early", "path": "early.csv", "test_path": "later.csv"},
        {"name": "other", "path": "other.csv"}]}})

    assert content_hash(plain) == ("267fc0580eda804f91cb06138b14efe22eeff406c40ddfa0d5581fe7"
                                   "f83e62a7")
    assert content_hash(fixed) != content_hash(plain)


# -- a node's dataset ------------------------------------------------------------------------
def _federated(test_fraction: float = 0.2) -> FederatedData:
    cfg = parse_config({"study": {"name": "net"},
                        "data": {"source": "federation", "dataset": "t", "label": "y",
                                 "features": ["a", "b", "c"], "test_fraction": test_fraction},
                        "model": {"name": "logreg"}})
    assert isinstance(cfg.data, FederatedData)
    return cfg.data


def test_a_nodes_dataset_takes_a_test_path(tmp_path: Path) -> None:
    _table(tmp_path / "train.csv", 50, 1)
    _table(tmp_path / "test.csv", 20, 2)
    (tmp_path / "site.toml").write_text(
        '[datasets.t]\npath = "train.csv"\ntest_path = "test.csv"\n[datasets.u]\n'
        'path = "train.csv"\n')

    node = load_node_data(tmp_path / "site.toml")
    fixed = build_site_data(_federated(), "h1", 0, 0, node.datasets["t"],
                            node.test_paths.get("t"))
    split = build_site_data(_federated(), "h1", 0, 0, node.datasets["u"],
                            node.test_paths.get("u"))

    assert node.test_paths == {"t": tmp_path / "test.csv"}
    assert (len(fixed.y_train), len(fixed.y_test)) == (50, 20)
    assert fixed.test_split == "fixed file test.csv"
    assert (len(split.y_train), len(split.y_test)) == (40, 10)
    assert split.test_split == "random 20 % split"


def test_a_nodes_test_file_with_bad_labels_is_refused_by_name(tmp_path: Path) -> None:
    _table(tmp_path / "train.csv", 50, 1)
    frame = pd.read_csv(_table(tmp_path / "test.csv", 20, 2))
    frame.loc[0, "y"] = 7
    frame.to_csv(tmp_path / "test.csv", index=False)
    with pytest.raises(DataError, match=r"test\.csv have a label outside 0\.\.1"):
        build_site_data(_federated(), "h1", 0, 0, tmp_path / "train.csv", tmp_path / "test.csv")


def test_a_networked_history_learns_each_sites_split_from_its_evaluation(
        tmp_path: Path) -> None:
    """The hub learns how a site chose its test rows from the site's evaluation replies."""
    _table(tmp_path / "train.csv", 50, 1)
    _table(tmp_path / "test.csv", 20, 2)
    data = _federated()
    sites = [build_site_data(data, "h1", 0, 0, tmp_path / "train.csv", tmp_path / "test.csv"),
             build_site_data(data, "h2", 1, 0, tmp_path / "train.csv")]
    cfg = parse_config({"data": data.model_dump(), "model": {"name": "logreg"}})
    learner = make_learner(cfg, ModelShape.of_federated(data))
    spec = learner.initial_parameters().spec
    transport = InMemoryTransport({s.name: SiteExecutor(s, learner, site_index=i,
                                                        expected=spec).handle
                                   for i, s in enumerate(sites)})
    history = History(study="net", sites=[{"name": "h1"}, {"name": "h2"}])
    engine = RoundEngine(EngineSettings(study="net", seed=0, train=TrainConfig()), FedAvg(),
                         transport, ["h1", "h2"], learner.initial_parameters(), history)

    engine.run(1)

    assert {s["name"]: s["test_split"] for s in history.sites} == {
        "h1": "fixed file test.csv", "h2": "random 20 % split"}


def test_a_node_tests_its_dataset_on_the_test_path_of_its_site_file(tmp_path: Path) -> None:
    """The node agent hands the dataset's test_path to the study's site data."""
    import json

    from fedcare.hub.provisioning import create_federation
    from fedcare.node.agent import NodeAgent
    from fedcare.node.hub_link import HubResponse

    create_federation(tmp_path / "fed", hub_host="127.0.0.1", hub_port=1, sites=["h1"],
                      site_kits=tmp_path / "kits")
    _table(tmp_path / "train.csv", 50, 1)
    _table(tmp_path / "test.csv", 20, 2)
    (tmp_path / "site.toml").write_text('[datasets.t]\npath = "train.csv"\n'
                                        'test_path = "test.csv"\n[approval]\nstudies = "any"\n')
    study = parse_config({"study": {"name": "net"}, "data": _federated().model_dump(),
                          "model": {"name": "logreg"}})
    body = json.dumps({"config": study.model_dump(mode="json"), "sites": ["h1"]}).encode()

    class Hub:
        def request(self, method: str, path: str, **kw: object) -> HubResponse:
            assert (method, path) == ("GET", "/v1/node/studies/s1")
            return HubResponse(200, {}, body)

        def close(self) -> None:
            pass

    with_permissive_policy(tmp_path / "site.toml")
    agent = NodeAgent(tmp_path / "kits" / "h1", tmp_path / "site.toml",
                      state_dir=tmp_path / "state")
    try:
        agent.http = Hub()  # type: ignore[assignment]
        executor = agent.study("s1").executor
    finally:
        agent.close()

    assert executor is not None
    assert (len(executor.data.y_train), len(executor.data.y_test)) == (50, 20)
    assert executor.data.test_split == "fixed file test.csv"
