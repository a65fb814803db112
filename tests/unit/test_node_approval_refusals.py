"""A node takes part only in a study whose exact content hash its steward approved, whatever
the hub says: a config changed by one byte is refused, shown pending to the steward and
reported to the hub as this site's refusal with the reason; an approval made while the node
runs takes effect at its next task. The hub is a scripted link here;
tests/integration/test_network_approvals.py runs the same over real processes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedcare.config import content_hash, parse_config
from fedcare.governance.approvals import Decision
from fedcare.hub.provisioning import create_federation
from fedcare.node.agent import NodeAgent
from fedcare.node.hub_link import HubResponse
from tests.unit.helpers import with_permissive_policy

APPROVED: dict[str, Any] = {
    "study": {"name": "sepsis", "rounds": 2},
    "data": {"source": "federation", "dataset": "x", "label": "y",
             "features": ["f0", "f1"], "standardize": False},
}
#: The same study with one byte changed.
CHANGED: dict[str, Any] = {**APPROVED, "study": {"name": "sepsiS", "rounds": 2}}


class _Hub:
    """Serves one config for study s1 and records the decisions the node reports."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.decisions: list[dict[str, Any]] = []

    def request(self, method: str, path: str, **kw: Any) -> HubResponse:
        if path == "/v1/node/decisions":
            self.decisions.append(kw["json"])
            return HubResponse(200, {}, b"{}")
        doc = {"study_id": "s1", "config": self.config, "config_hash": "0" * 64,
               "sites": ["alpha"]}  # the hub's hash is never used
        return HubResponse(200, {}, json.dumps(doc).encode())

    def close(self) -> None:
        pass


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[NodeAgent]:
    create_federation(tmp_path / "fed", hub_host="127.0.0.1", hub_port=1, sites=["alpha"],
                      site_kits=tmp_path / "kits")
    rng = np.random.default_rng(0)
    rows = "\n".join(f"{a:.3f},{b:.3f},{int(a + b > 0)}" for a, b in rng.normal(size=(60, 2)))
    (tmp_path / "d.csv").write_text("f0,f1,y\n" + rows + "\n")
    conf = tmp_path / "node.toml"
    conf.write_text('[datasets.x]\npath = "d.csv"\n[approval]\nstudies = []\n')
    with_permissive_policy(conf)
    node = NodeAgent(tmp_path / "kits" / "alpha", conf, state_dir=tmp_path / "state")
    yield node
    node.close()


def test_a_config_changed_after_approval_is_refused_and_reported(agent: NodeAgent) -> None:
    approved, changed = (content_hash(parse_config(c)) for c in (APPROVED, CHANGED))
    agent.approvals.saw("s0", approved, "sepsis", APPROVED, ["alpha"])
    agent.approvals.decide(approved, Decision.APPROVED, None)
    hub = _Hub(CHANGED)  # the hub now serves another config under the study's id
    agent.http = hub  # type: ignore[assignment]

    entry = agent.study("s1")

    assert entry.executor is None and entry.config_hash == changed
    assert f"has not approved study 'sepsiS' (content hash {changed})" in (entry.refusal or "")
    assert [(d["study_id"], d["decision"], d["content_hash"]) for d in hub.decisions] == [
        ("s1", "refused", changed)]
    assert "fedcare node approve" in hub.decisions[0]["reason"]
    pending = {s.hash: s.decision for s in agent.approvals.studies()}
    assert pending[changed] is None and pending[approved] is not None

    # The steward approves the new hash while the node runs: the next task takes part.
    agent.approvals.decide(changed[:8], Decision.APPROVED, None)
    entry = agent.study("s1")
    assert entry.refusal is None and entry.executor is not None


def test_an_unapproved_study_never_starts_training(agent: NodeAgent) -> None:
    hub = _Hub(APPROVED)
    agent.http = hub  # type: ignore[assignment]
    entry = agent.study("s1")
    assert entry.executor is None and "has not approved" in (entry.refusal or "")
    assert hub.decisions[0]["decision"] == "refused"


def test_a_revoked_approval_overrides_the_site_files_list(agent: NodeAgent) -> None:
    digest = content_hash(parse_config(APPROVED))
    agent.data = type(agent.data)(agent.data.datasets, True, frozenset())  # "any"
    assert agent.approved(digest)
    agent.approvals.saw("s1", digest, "sepsis", APPROVED, ["alpha"])
    agent.approvals.decide(digest, Decision.REVOKED, "consent withdrawn",
                           preapproved=agent.data.approves)
    assert not agent.approved(digest)
    agent.http = _Hub(APPROVED)  # type: ignore[assignment]
    assert "revoked study 'sepsis'" in (agent.study("s1").refusal or "")
