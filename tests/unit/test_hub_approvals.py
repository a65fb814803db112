"""The hub's side of study approval, in process: a submitted study waits (it does not fail),
an approval of another hash than the study's does not count, a rejection ends it with the
site's reason, its deadline ends it naming the undecided sites, and a hub restarted while it
waits starts it when the last approval arrives. Over real processes:
tests/integration/test_network_approvals.py."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fedcare.config import content_hash, parse_config
from fedcare.core.errors import ValidationError
from fedcare.governance.approvals import Decision
from fedcare.governance.audit_log import EventKind, read
from fedcare.hub import approvals as hub_approvals
from fedcare.hub.errors import NotFound
from fedcare.hub.service import HubService, NeverRevoked

STUDY: dict[str, Any] = {
    "study": {"name": "waits", "rounds": 3},
    "data": {"source": "federation", "dataset": "breast", "label": "y",
             "features": ["f0", "f1"], "standardize": False}}


def _hub(folder: Path) -> HubService:
    svc = HubService(folder, revocation=NeverRevoked())
    for site in ("a", "b"):
        svc.hello(site, "01", "9.9", [{"name": "breast", "rows": 140}], "s")
    return svc


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubService]:
    monkeypatch.setattr(hub_approvals, "DEADLINE_CHECK", 0.05)
    launched: list[str] = []
    svc = _hub(tmp_path / "hub")
    svc.approvals._launch = launched.append  # record, do not train (no nodes here)
    svc.launched = launched  # type: ignore[attr-defined]
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()
        svc.db.dispose()


def _until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
    return got


def test_a_study_waits_for_every_site_and_starts_on_the_last_approval(hub: HubService) -> None:
    doc = hub.submit_study(STUDY)
    study_id, digest = doc["study_id"], doc["config_hash"]
    assert doc["status"] == "pending_approval"
    assert [p["study_id"] for p in hub.pending_for("a")] == [study_id]
    assert hub.pending_for("c") == []  # a site the study does not name

    with pytest.raises(ValidationError, match="does not apply"):
        hub.site_decided("a", study_id, Decision.APPROVED, "f" * 64, None)  # another hash
    with pytest.raises(NotFound):
        hub.site_decided("c", study_id, Decision.APPROVED, digest, None)  # not its study
    hub.site_decided("a", study_id, Decision.APPROVED, digest, None)
    time.sleep(0.2)
    st = hub.study_status(study_id)
    assert st["status"] == "pending_approval" and hub.launched == []  # type: ignore[attr-defined]
    assert [(a["site"], a["decision"]) for a in st["approvals"]] == [("a", "approved")]
    assert hub.pending_for("a") == [] and len(hub.pending_for("b")) == 1

    hub.site_decided("b", study_id, Decision.APPROVED, digest, None)
    assert hub.study_status(study_id)["status"] == "running"
    assert hub.launched == [study_id]  # type: ignore[attr-defined]
    hub.state.audit.flush()
    log = hub.data_dir / "audit" / "hub-audit.jsonl"
    approved = [e.details["site"] for e in read(log) if e.kind is EventKind.STUDY_APPROVED]
    assert approved == ["a", "b"]


def test_a_revocation_withdraws_the_sites_open_tasks_of_a_running_study(
        hub: HubService) -> None:
    doc = hub.submit_study(STUDY)
    for site in ("a", "b"):
        hub.site_decided(site, doc["study_id"], Decision.APPROVED, doc["config_hash"], None)
    withdrawn: list[tuple[str, str, str]] = []
    hub.approvals._withdraw = lambda *args: withdrawn.append(args) or 0  # type: ignore[func-returns-value]
    assert not hub.approvals.withdrawn(doc["study_id"], "b")
    hub.site_decided("b", doc["study_id"], Decision.REVOKED, doc["config_hash"], "consent")
    assert withdrawn == [(doc["study_id"], "b", "site b revoked the study: consent")]
    assert hub.approvals.withdrawn(doc["study_id"], "b")
    assert not hub.approvals.withdrawn(doc["study_id"], "a")
    assert hub.study_status(doc["study_id"])["status"] == "running"  # the engine decides


def test_one_rejection_ends_it_with_the_sites_reason(hub: HubService) -> None:
    doc = hub.submit_study(STUDY)
    hub.site_decided("a", doc["study_id"], Decision.APPROVED, doc["config_hash"], None)
    hub.site_decided("b", doc["study_id"], Decision.REFUSED, doc["config_hash"],
                     "site policy: max_rounds 2, the study asks 3")
    st = hub.study_status(doc["study_id"])
    assert st["status"] == "rejected"
    assert st["error"] == "site b refused the study: site policy: max_rounds 2, the study asks 3"
    assert hub.launched == []  # type: ignore[attr-defined]


def test_the_deadline_ends_it_naming_the_undecided_sites(hub: HubService) -> None:
    cfg = {**STUDY, "study": {**STUDY["study"], "approval_deadline_hours": 0.0002}}  # 0.7 s
    doc = hub.submit_study(cfg)
    hub.site_decided("b", doc["study_id"], Decision.APPROVED, doc["config_hash"], None)
    st = _until(lambda: (s := hub.study_status(doc["study_id"]))["status"] != "pending_approval"
                and s)
    assert st["status"] == "expired" and "['a']" in st["error"], st


def test_a_hub_restarted_while_a_study_waits_keeps_its_decisions(tmp_path: Path) -> None:
    svc = _hub(tmp_path / "hub")
    svc.start()
    doc = svc.submit_study(STUDY)
    svc.site_decided("a", doc["study_id"], Decision.APPROVED, doc["config_hash"], None)
    svc.stop()
    svc.db.dispose()

    again = _hub(tmp_path / "hub")
    launched: list[str] = []
    again.approvals._launch = launched.append
    again.start()
    try:
        assert again.study_status(doc["study_id"])["status"] == "pending_approval"
        again.site_decided("b", doc["study_id"], Decision.APPROVED, doc["config_hash"], None)
        assert launched == [doc["study_id"]]
        assert again.study_status(doc["study_id"])["status"] == "running"
    finally:
        again.stop()
        again.db.dispose()


@pytest.mark.parametrize("model", [{"name": "logreg"}, {"name": "mlp", "hidden": [256, 256]},
                                   {"name": "mlp", "hidden": [8], "dropout": 0.0}])
def test_each_site_computes_the_hash_the_researcher_printed(hub: HubService,
                                                           model: dict[str, Any]) -> None:
    """The node recomputes the hash from the config the hub sends; with the full dump of an
    MLP config it got another hash than `fedcare study hash` (the legacy model keys hash
    only as given), so no site's approval could apply."""
    cfg = {**STUDY, "model": model}
    doc = hub.submit_study(cfg)
    (sent,) = hub.pending_for("a")
    assert doc["config_hash"] == content_hash(parse_config(cfg))
    assert content_hash(parse_config(sent["config"])) == doc["config_hash"]
    node = hub.study_for_node("a", doc["study_id"])["config"]
    assert content_hash(parse_config(node)) == doc["config_hash"]
