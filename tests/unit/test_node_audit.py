"""A node's own signed audit log (fedcare.node.audit): signed with the site key, verified
with the site certificate; what a node's answer to a task writes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fedcare.core.errors import FedcareError
from fedcare.core.messages import ErrorReply
from fedcare.core.wire import encode_error
from fedcare.governance.audit_log import EventKind, read, verify
from fedcare.hub.provisioning import create_federation
from fedcare.node.agent import NodeAgent
from fedcare.node.audit import NodeAudit, node_log_and_keys
from tests.unit.helpers import with_permissive_policy


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fed")
    create_federation(root / "fed", hub_host="127.0.0.1", hub_port=1, sites=["alpha"],
                      site_kits=root / "kits")
    return root / "kits" / "alpha"


def test_entries_are_signed_with_the_site_key_and_verify_with_its_certificate(
        kit: Path, tmp_path: Path) -> None:
    audit = NodeAudit("alpha", kit / "site.key", tmp_path)
    audit.study_loaded("s1", "study", "ab" * 32, "x", None)
    audit.task_done("s1/r1/fit/alpha", "h:p", b"reply bytes", 1.0, 1.5)
    refusal = encode_error(ErrorReply("s1/r2/fit/alpha", "alpha", 2, "Refused", "no budget"))
    audit.task_done("s1/r2/fit/alpha", "h:q", refusal, 1.5, 1.5)
    path, keys = node_log_and_keys(kit, tmp_path)
    assert set(keys) == {"site:alpha"}
    verdict = verify(path, keys)
    assert verdict.ok and verdict.log == "site:alpha"
    entries = list(read(path))
    assert [e.kind for e in entries] == [EventKind.STUDY_LOADED, EventKind.PRIVACY_CHARGED,
                                         EventKind.UPDATE_SENT, EventKind.TASK_REFUSED]
    assert entries[1].details["epsilon"] == 0.5 and entries[1].details["epsilon_total"] == 1.5
    sent = entries[2].details
    assert sent["digest"] == hashlib.sha256(b"reply bytes").hexdigest()
    assert sent["payload_digest"] == "h:p" and sent["kind"] == "fit"
    assert "no budget" in entries[3].details["why"]


def test_a_node_without_a_log_is_named(kit: Path, tmp_path: Path) -> None:
    with pytest.raises(FedcareError, match="no audit log"):
        node_log_and_keys(kit, tmp_path / "empty")


def test_the_agent_records_each_task_it_answers_once(kit: Path, tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("a,label\n1,0\n")
    conf = tmp_path / "node.toml"
    conf.write_text('[datasets.x]\npath = "d.csv"\n[approval]\nstudies = "any"\n')
    with_permissive_policy(conf)
    agent = NodeAgent(kit, conf, state_dir=tmp_path / "state")
    agent.handle = lambda study_id, payload: ("s1/r1/fit/alpha", b"reply")  # type: ignore[method-assign]
    try:
        agent.answer("s1", b"task", "digest-1")
        agent.answer("s1", b"task", "digest-1")  # asked again: the same reply, not recorded
    finally:
        agent.close()
    (entry,) = read(tmp_path / "state" / "audit.jsonl")
    assert entry.kind is EventKind.UPDATE_SENT and entry.subject == "s1/r1/fit/alpha"
    assert entry.details["payload_digest"] == "digest-1"
