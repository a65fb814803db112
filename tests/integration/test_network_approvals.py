"""The approval workflow over real HTTPS between real processes: a hub, nodes whose sites
approve nothing in advance (``[approval] studies = []``), and each site's steward deciding
with ``fedcare node approve|reject|revoke`` on the node's folder while the node runs.

An unapproved study, and one changed by a byte after approval, never train at a site; a
rejection and a revocation reach the researcher with their reasons; a revoked site is never
sent the model again.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from fedcare.governance.audit_log import EventKind, read
from fedcare.hub.audit import hub_log_and_keys
from tests.integration.network import NetFederation, study_config
from tests.integration.network import net_fixture as net_fixture  # the "net" fixture

Net = Callable[..., NetFederation]
pytestmark = pytest.mark.slow
#: Long enough for each node's approval sync (every 2 s) to have seen a study several times.
SETTLE = 6.0


def _seen_at(fed: NetFederation, site: str, digest: str) -> dict[str, Any] | None:
    r = fed.node_cli(site, "studies", "--json")
    if r.returncode != 0:
        return None
    return next((s for s in json.loads(r.stdout) if s["hash"] == digest), None)


def _wait_seen(fed: NetFederation, digest: str) -> None:
    for site in fed.sites:
        fed.wait_until(f"site {site} to list study {digest[:12]} as pending",
                       lambda site=site: _seen_at(fed, site, digest), 60)


def _ok(r: Any) -> str:
    assert r.returncode == 0, r.stdout + r.stderr
    return str(r.stdout)


def test_a_study_waits_for_every_steward_and_a_changed_one_waits_again(net: Net) -> None:
    fed = net(sites=("alpha", "beta"), approvals=[]).start()
    cfg = study_config(name="approvals", rounds=2)
    study_file = fed.root / "study.yaml"
    study_file.write_text(yaml.safe_dump(cfg))
    printed = _ok(fed.cli("study", "hash", str(study_file))).strip()

    study_id = fed.submit(cfg)
    st = fed.status(study_id)
    assert (st["status"], st["config_hash"]) == ("pending_approval", printed)
    _wait_seen(fed, printed)
    time.sleep(SETTLE)  # the nodes are up and polling: it still waits, it does not fail
    st = fed.status(study_id)
    assert (st["status"], st["rounds"], st["approvals"]) == ("pending_approval", [], [])
    out = _ok(fed.cli("study", "status", study_id, "--federation", str(fed.researcher_dir)))
    assert "waiting for the approval of alpha, beta" in out

    shown = _ok(fed.node_cli("alpha", "studies", "--show", printed[:12]))
    assert printed in shown and '"approvals"' in shown  # the full config, as received
    _ok(fed.node_cli("alpha", "approve", printed[:12]))
    fed.wait_until("alpha's approval to reach the hub",
                   lambda: fed.status(study_id)["approvals"], 30)
    assert fed.status(study_id)["status"] == "pending_approval"
    _ok(fed.node_cli("beta", "approve", printed[:10]))  # no node restarted
    st = fed.wait_study(study_id, 90)
    assert st["status"] == "completed", st
    assert {(a["site"], a["decision"]) for a in st["approvals"]} == {
        ("alpha", "approved"), ("beta", "approved")}

    # The same study with one byte changed: another hash, pending again, never trained.
    changed = study_config(name="approvalz", rounds=2)
    again = fed.submit(changed)
    digest = fed.status(again)["config_hash"]
    assert digest != printed
    _wait_seen(fed, digest)
    time.sleep(SETTLE)
    st = fed.status(again)
    assert (st["status"], st["rounds"]) == ("pending_approval", [])
    assert _seen_at(fed, "alpha", digest)["decision"] is None  # type: ignore[index]
    assert _seen_at(fed, "alpha", printed)["decision"] == "approved"  # type: ignore[index]

    # A rejection ends it, with the steward's reason, in `fedcare study status`.
    r = fed.node_cli("beta", "reject", digest[:12])
    assert r.returncode == 2 and "--why" in r.stderr  # a reason is required
    r = fed.node_cli("beta", "approve", "0123456789ab")
    assert r.returncode == 2 and "no study with content hash" in r.stderr
    _ok(fed.node_cli("beta", "reject", digest[:12], "--why", "not covered by our ethics vote"))
    st = fed.wait_study(again, 30)
    assert st["status"] == "rejected" and "not covered by our ethics vote" in st["error"]
    out = _ok(fed.cli("study", "status", again, "--federation", str(fed.researcher_dir)))
    assert "rejected" in out and "not covered by our ethics vote" in out


def test_a_revoked_site_is_never_sent_the_model_again(net: Net) -> None:
    fed = net(approvals=[]).start()
    # Every site must answer each round: without gamma the study cannot go on, and fails.
    cfg = study_config(name="revoked", rounds=400,
                       strategy={"name": "fedavg", "min_completed": 3})
    study_id = fed.submit(cfg)
    digest = fed.status(study_id)["config_hash"]
    _wait_seen(fed, digest)
    for site in fed.sites:
        _ok(fed.node_cli(site, "approve", digest[:12]))
    fed.wait_study(study_id, 60, until=lambda st: st["current_round"] >= 2,
                   what="two rounds")
    _ok(fed.node_cli("gamma", "revoke", digest[:12], "--why", "patient objection received"))
    st = fed.wait_study(study_id, 60)
    # gamma's node refused its next task at once (the reason reaches the researcher with
    # the round's failure) and reported the revocation within a second.
    assert st["status"] == "failed" and st["current_round"] < 400, st
    assert "gamma" in st["error"] and "patient objection received" in json.dumps(st), st

    def gamma_revoked() -> dict[str, Any] | None:
        got = [a for a in fed.status(study_id)["approvals"] if a["site"] == "gamma"]
        return got[0] if got and got[0]["decision"] == "revoked" else None

    gamma = fed.wait_until("gamma's revocation at the hub", gamma_revoked, 30)
    assert gamma["reason"] == "patient objection received"

    # The hub's audit trail: after it recorded gamma's revocation, no task went to gamma.
    log, _ = hub_log_and_keys(fed.hub_dir / "data")
    entries = list(read(log))
    at = next(i for i, e in enumerate(entries) if e.kind is EventKind.STUDY_REVOKED)
    assert entries[at].details["site"] == "gamma"
    later = [e for e in entries[at:] if e.kind is EventKind.TASK_SENT
             and e.details["site"] == "gamma"]
    assert later == []
    # Nor was one offered before it handed over afterwards (it held the model).
    with sqlite3.connect(fed.hub_dir / "data" / "hub.db") as db:
        (decided,) = db.execute("SELECT decided_at FROM site_decisions WHERE study_id = ? "
                                "AND site = 'gamma'", (study_id,)).fetchone()
        delivered = [d for (d,) in db.execute(
            "SELECT delivered_at FROM tasks WHERE study_id = ? AND site = 'gamma' AND "
            "delivered_at IS NOT NULL", (study_id,))]
    assert delivered and all(d < decided for d in delivered), (decided, delivered)
    out = _ok(fed.cli("study", "status", study_id, "--federation", str(fed.researcher_dir)))
    assert "revoked" in out and "patient objection received" in out
