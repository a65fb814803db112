"""The privacy ledger's anchor (audit F9): the node keeps the head the hub acknowledged and
refuses to charge a ledger that does not extend it; the hub keeps the longest head per site
and never lowers it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedcare.core.errors import FedcareError
from fedcare.hub.api import anchor_ledger_head
from fedcare.hub.service import HubService, NeverRevoked
from fedcare.node.ledger_anchor import ANCHOR_FILE, LedgerAnchor
from fedcare.privacy.dp.errors import LedgerError
from fedcare.privacy.dp.ledger import (
    LEDGER_HEAD_HEADER,
    LedgerEntry,
    LedgerHead,
    PrivacyLedger,
    SitePrivacyPolicy,
)
from tests.unit.helpers import ledger_key

KEY = ledger_key()


def _entry(r: int) -> LedgerEntry:
    return LedgerEntry("s", r, f"s/r{r}/fit/a", "dp_fedavg_distributed", 2.0, 1.0, 1, 1e-5)


def _node(state: Path, charged: int = 0) -> tuple[PrivacyLedger, LedgerAnchor]:
    """A node's ledger and anchor as NodeAgent builds them (at every start)."""
    ledger = PrivacyLedger(state / "privacy-ledger.jsonl", SitePrivacyPolicy(50.0, 1e-5),
                           key=KEY)
    anchor = LedgerAnchor(ledger, state / ANCHOR_FILE)
    for r in range(1, charged + 1):
        ledger.charge(_entry(r))
    return ledger, anchor


def test_the_acknowledged_head_survives_a_restart_and_pins_the_ledger(tmp_path: Path) -> None:
    ledger, anchor = _node(tmp_path, charged=3)
    anchor.acknowledged(anchor.headers()[LEDGER_HEAD_HEADER])
    lines = ledger.path.read_bytes().splitlines(keepends=True)
    ledger.path.write_bytes(lines[0])  # cut while the node was down
    restarted, _ = _node(tmp_path)
    assert restarted.anchor == LedgerHead(3, ledger.anchor.hash if ledger.anchor else "")
    with pytest.raises(LedgerError, match="holds 1 entries but the hub acknowledged 3"):
        restarted.charge(_entry(4))


def test_a_deleted_ledger_and_anchor_file_are_found_by_the_hubs_answer(tmp_path: Path) -> None:
    ledger, anchor = _node(tmp_path, charged=2)
    hub_says = anchor.headers()[LEDGER_HEAD_HEADER]
    anchor.acknowledged(hub_says)
    ledger.path.unlink()
    (tmp_path / ANCHOR_FILE).unlink()
    restarted, fresh = _node(tmp_path)
    assert restarted.anchor is None and restarted.verify() == []  # nothing to go by yet
    assert fresh.headers() == {LEDGER_HEAD_HEADER: "0:" + "0" * 64}  # what hello reports
    fresh.acknowledged(hub_says)  # the hub answers with the head it kept
    assert any("holds 0 entries" in p for p in fresh.problems())
    with pytest.raises(LedgerError):
        restarted.charge(_entry(1))
    assert not restarted.path.exists()


def test_the_anchor_only_grows(tmp_path: Path) -> None:
    ledger, anchor = _node(tmp_path, charged=2)
    two = ledger.head()
    anchor.acknowledged(str(two))
    ledger.charge(_entry(3))
    anchor.acknowledged(str(ledger.head()))
    three = ledger.anchor
    assert three is not None and three.count == 3
    anchor.acknowledged(str(two))  # a hub that lost its database answers an older head
    anchor.acknowledged(None)      # or none at all
    assert ledger.anchor == three
    assert json.loads((tmp_path / ANCHOR_FILE).read_text())["head"] == str(three)


def test_a_ledger_already_found_cut_is_not_re_anchored_higher(tmp_path: Path) -> None:
    ledger, anchor = _node(tmp_path, charged=3)
    anchor.acknowledged(str(ledger.head()))
    held = ledger.anchor
    ledger.path.write_bytes(ledger.path.read_bytes().splitlines(keepends=True)[0])
    anchor.acknowledged("7:" + "ab" * 32)
    assert ledger.anchor == held and ledger.verify() != []


def test_a_damaged_ledger_reports_no_head_to_the_hub(tmp_path: Path) -> None:
    ledger, anchor = _node(tmp_path, charged=1)
    assert anchor.headers() == {LEDGER_HEAD_HEADER: str(ledger.head())}
    with open(ledger.path, "ab") as fh:
        fh.write(b'{"torn')
    assert anchor.headers() == {}


def test_an_unreadable_anchor_file_stops_the_node_with_a_reason(tmp_path: Path) -> None:
    (tmp_path / ANCHOR_FILE).write_text("{not json")
    with pytest.raises(LedgerError, match=r"anchor .* Restore it, or remove it"):
        _node(tmp_path)


def test_a_hub_answering_garbage_is_an_error(tmp_path: Path) -> None:
    _, anchor = _node(tmp_path)
    with pytest.raises(FedcareError, match="invalid ledger head"):
        anchor.acknowledged("12:not-a-hash")


def test_the_hub_keeps_the_longest_head_and_logs_a_cut(tmp_path: Path) -> None:
    service = HubService(tmp_path / "hub", revocation=NeverRevoked())
    try:
        three, one = LedgerHead(3, "c" * 64), LedgerHead(1, "a" * 64)
        assert anchor_ledger_head(service, "alpha", None) is None
        assert anchor_ledger_head(service, "alpha", three) == str(three)
        assert anchor_ledger_head(service, "alpha", one) == str(three)  # refused
        assert anchor_ledger_head(service, "alpha", None) == str(three)
        assert anchor_ledger_head(service, "beta", one) == str(one)
        from fedcare.hub.store import EventRepo

        with service.db.session() as s:
            logged = [e.message for e in EventRepo(s).recent(kind="ledger")]
        assert len(logged) == 1 and "site alpha" in logged[0] and "cut, deleted" in logged[0]
    finally:
        service.db.dispose()
