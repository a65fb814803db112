"""A site runs the strategy of the study it approved, never the one a task names (review P5).

The review's Appendix C: in an approved central DP-FedAvg study (clip 1.0), a task saying
``strategy = "scaffold"`` made the site return its clipped update AND a SCAFFOLD control-variate
change that is the unclipped update, in the clear. Now the executor is bound to the approved
strategy and refuses the task with an error reply saying why.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedcare.core.dataset import SiteData, TaskType
from fedcare.core.errors import ConfigError
from fedcare.core.learning import FitResult
from fedcare.core.messages import ErrorReply, Task, TaskKind, TrainConfig, Update
from fedcare.core.params import Parameters
from fedcare.core.wire import decode_reply, encode_task
from fedcare.engine.executor import SiteExecutor
from fedcare.engine.privacy import SitePrivacy
from fedcare.hub.provisioning import create_federation
from fedcare.node.agent import NodeAgent
from fedcare.node.hub_link import HubResponse
from fedcare.privacy.dp.spec import Mechanism, PrivacySpec
from tests.unit.helpers import with_permissive_policy


class BigStepLearner:
    """Moves every weight by +10: far above the clip (the review's stand-in learner)."""

    name = "fake"

    def initial_parameters(self) -> Parameters:
        return Parameters({"w": np.zeros(4, np.float32)})

    def fit(self, parameters, x, y, config, *, seed, correction=None) -> FitResult:
        return FitResult(Parameters({"w": parameters["w"] + 10.0}), len(x), 1)

    def evaluate(self, parameters, x, y) -> dict[str, float]:
        return {}


def _appendix_c(approved: str, asked: str) -> Update | ErrorReply:
    x, y = np.zeros((20, 3), np.float32), np.zeros(20, np.int64)
    data = SiteData("a", x, y, x[:0], y[:0], ("f1", "f2", "f3"), TaskType.BINARY, 2)
    spec = PrivacySpec(Mechanism.DP_FEDAVG_CENTRAL, clip=1.0, noise_multiplier=1.0)
    learner = BigStepLearner()
    g = learner.initial_parameters()
    ex = SiteExecutor(data, learner, site_index=0, expected=g.spec,
                      privacy=SitePrivacy(spec, None, rows=20, study_sites=1),
                      strategy=approved)
    task = Task(task_id="s/r1/fit/a", study="s", round=1, site="a", kind=TaskKind.FIT,
                parameters=g, train=TrainConfig(lr=1.0), strategy=asked, evaluate=False,
                aux={"c": Parameters({"w": np.zeros(4, np.float32)})}, meta={"dp_sites": 1})
    return decode_reply(ex.handle(encode_task(task)), g.spec,
                        {"dc": None} if asked == "scaffold" else {}, site="a")


def test_appendix_c_a_task_switching_a_dp_study_to_scaffold_is_refused() -> None:
    out = _appendix_c(approved="fedavg", asked="scaffold")
    assert isinstance(out, ErrorReply)
    assert out.error_type == "ProtocolError"
    assert "'scaffold'" in out.message and "approved uses 'fedavg'" in out.message


def test_appendix_c_the_approved_strategy_still_runs_clipped() -> None:
    out = _appendix_c(approved="fedavg", asked="fedavg")
    assert isinstance(out, Update) and not out.aux
    assert np.linalg.norm(out.parameters["w"]) == pytest.approx(1.0, rel=1e-5)
    assert "strategy:fedavg" in out.provenance


def test_an_approved_scaffold_study_runs_its_site_half() -> None:
    out = _appendix_c(approved="scaffold", asked="scaffold")
    assert isinstance(out, Update) and set(out.aux) == {"dc"}
    assert isinstance(_appendix_c(approved="scaffold", asked="fedavg"), ErrorReply)


def test_an_unknown_strategy_is_refused_at_construction() -> None:
    x, y = np.zeros((2, 3), np.float32), np.zeros(2, np.int64)
    data = SiteData("a", x, y, x, y, ("f1", "f2", "f3"), TaskType.BINARY, 2)
    with pytest.raises(ConfigError, match="unknown strategy 'magic'"):
        SiteExecutor(data, BigStepLearner(), site_index=0, expected=BigStepLearner()
                     .initial_parameters().spec, strategy="magic")


# -- the node binds its executor to the study it approved -----------------------------------
class _StudyHub:
    """The hub's answer to the node's study request (the approved config)."""

    def __init__(self, config: dict) -> None:
        self.config = config

    def request(self, method: str, path: str, **kw: object) -> HubResponse:
        import json

        assert (method, path) == ("GET", "/v1/node/studies/s1"), (method, path)
        return HubResponse(200, {}, json.dumps({"config": self.config,
                                                "sites": ["alpha"]}).encode())

    def close(self) -> None:
        pass


@pytest.mark.parametrize("approved", ["fedavg", "fedprox"])
def test_a_node_refuses_a_task_naming_another_strategy_than_its_approved_study(
        tmp_path: Path, approved: str) -> None:
    create_federation(tmp_path / "fed", hub_host="127.0.0.1", hub_port=1, sites=["alpha"],
                      site_kits=tmp_path / "kits")
    rng = np.random.default_rng(0)
    rows = "\n".join(f"{v:.3f},{int(v > 0)}" for v in rng.normal(size=40))
    (tmp_path / "d.csv").write_text("a,label\n" + rows + "\n")
    conf = tmp_path / "node.toml"
    conf.write_text('[datasets.x]\npath = "d.csv"\n[approval]\nstudies = "any"\n')
    with_permissive_policy(conf)
    agent = NodeAgent(tmp_path / "kits" / "alpha", conf, state_dir=tmp_path / "st")
    agent.http = _StudyHub({  # type: ignore[assignment]
        "data": {"source": "federation", "dataset": "x", "label": "label", "features": ["a"],
                 "standardize": False},
        "strategy": {"name": approved}})
    try:
        executor = agent.study("s1").executor
        assert executor is not None and executor.strategy == approved
        g = Parameters({k: np.zeros(s.shape, s.dtype) for k, s in executor.expected.items()})
        for asked, refused in ((approved, False), ("scaffold", True)):
            task = Task(task_id=f"s1/r1/fit/alpha-{asked}", study="s1", round=1, site="alpha",
                        kind=TaskKind.FIT, parameters=g, strategy=asked,
                        aux={"c": g} if asked == "scaffold" else {})
            _, reply = agent.handle("s1", encode_task(task))
            out = decode_reply(reply, executor.expected,
                               {"dc": None} if asked == "scaffold" else {}, site="alpha")
            assert isinstance(out, ErrorReply) is refused, out
            if refused:
                assert f"approved uses '{approved}'" in out.message  # type: ignore[union-attr]
    finally:
        agent.close()


# -- simulation: the study's executors are bound to its strategy, the baselines to FedAvg -----
@pytest.mark.parametrize("workers", [1, 2])
def test_a_scaffold_simulation_runs_its_baselines_on_fedavg_executors(workers: int) -> None:
    import fedcare

    history = fedcare.simulate({
        "study": {"name": "bind", "seed": 1, "rounds": 2},
        "data": {"source": "synthetic", "sites": 3, "rows_per_site": 60, "n_features": 4},
        "strategy": {"name": "scaffold"},
        "baselines": {"local": True, "centralized": True},
        "run": {"workers": workers}})
    assert all(not r.sites_failed and len(r.sites_completed) == 3 for r in history.rounds)
    assert set(history.baselines["local"]["site_metrics"]) == {"site-1", "site-2", "site-3"}
    assert history.baselines["centralized"]["global_metrics"]
