"""The site's study decisions (fedcare.node.approvals) and the approval rule
(fedcare.governance.approvals): prefixes, the steward's moves, what is reported to the hub,
and the CLI and the running node writing the same file at once."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from fedcare.config import content_hash, parse_config
from fedcare.governance.approvals import Decision, VerdictKind, verdict, withdrawn
from fedcare.node.approvals import ApprovalError, ApprovalStore

CONFIG: dict[str, Any] = {
    "study": {"name": "sepsis", "rounds": 2},
    "data": {"source": "federation", "dataset": "breast", "label": "y",
             "features": ["f0", "f1"], "standardize": False},
}


def _hash(cfg: dict[str, Any]) -> str:
    return content_hash(parse_config(cfg))


def _seen(store: ApprovalStore, study_id: str, cfg: dict[str, Any] = CONFIG) -> str:
    digest = _hash(cfg)
    store.saw(study_id, digest, cfg["study"]["name"], cfg, ["a", "b"])
    return digest


@pytest.fixture
def store(tmp_path: Path) -> ApprovalStore:
    return ApprovalStore.in_state_dir(tmp_path / "state")


def test_a_unique_prefix_of_8_hex_digits_names_a_study(store: ApprovalStore) -> None:
    digest = _seen(store, "s1")
    assert store.resolve(digest[:8]) == digest
    assert store.resolve(digest.upper()) == digest
    with pytest.raises(ApprovalError, match="at least 8"):
        store.resolve(digest[:7])
    with pytest.raises(ApprovalError, match="not a study content hash"):
        store.resolve("zz" + digest[2:10])
    with pytest.raises(ApprovalError, match="no study with content hash"):
        store.resolve("0" * 64 if not digest.startswith("0") else "1" * 64)


def test_an_ambiguous_prefix_is_refused_with_the_candidates(store: ApprovalStore) -> None:
    store.saw("s3", "abcdef01" + "0" * 56, "x", CONFIG, ["a"])
    store.saw("s4", "abcdef01" + "1" * 56, "y", CONFIG, ["a"])
    with pytest.raises(ApprovalError, match="start of 2 studies"):
        store.decide("abcdef01", Decision.APPROVED, None)
    assert store.decision("abcdef01" + "0" * 56) is None  # nothing was decided
    assert store.resolve("abcdef010") == "abcdef01" + "0" * 56


def test_the_stewards_moves(store: ApprovalStore) -> None:
    digest = _seen(store, "s1")
    with pytest.raises(ApprovalError, match="no approval to revoke"):
        store.decide(digest[:10], Decision.REVOKED, "changed my mind")
    with pytest.raises(ApprovalError, match="say why"):
        store.decide(digest[:10], Decision.REJECTED, "  ")
    full, record = store.decide(digest[:10], Decision.APPROVED, None, who="steward")
    assert full == digest and record.who == "steward"
    with pytest.raises(ApprovalError, match="approved already"):
        store.decide(digest, Decision.APPROVED, None)
    with pytest.raises(ApprovalError, match="revoke"):
        store.decide(digest, Decision.REJECTED, "no")
    store.decide(digest, Decision.REVOKED, "the ethics approval lapsed")
    got = store.decision(digest)
    assert got is not None and (got.decision, got.reason) == (
        Decision.REVOKED, "the ethics approval lapsed")
    with pytest.raises(ApprovalError, match="steward"):
        store.decide(digest, Decision.REFUSED, "x")


def test_a_config_changed_by_one_byte_is_pending_again(store: ApprovalStore) -> None:
    digest = _seen(store, "s1")
    store.decide(digest, Decision.APPROVED, None)
    changed = {**CONFIG, "study": {**CONFIG["study"], "name": "sepsiS"}}
    other = _seen(store, "s2", changed)
    assert other != digest and store.decision(other) is None
    # The same hub study id now carrying another config: undecided, not approved.
    _seen(store, "s1", changed)
    assert [r.study_id for r in store.unreported(lambda _: False)] == []


def test_each_decision_is_reported_once_and_a_change_again(store: ApprovalStore) -> None:
    digest = _seen(store, "s1")
    assert store.unreported(lambda _: False) == []  # undecided: nothing to say
    assert [r.decision for r in store.unreported(lambda h: h == digest)] == [Decision.APPROVED]
    store.decide(digest, Decision.APPROVED, None)
    (report,) = store.unreported(lambda _: False)
    store.reported(report)
    assert store.unreported(lambda _: False) == []
    store.decide(digest, Decision.REVOKED, "withdrawn")
    (report,) = store.unreported(lambda _: False)
    assert (report.study_id, report.decision, report.reason) == ("s1", Decision.REVOKED,
                                                                 "withdrawn")


def test_the_nodes_refusal_is_recorded_and_reported(store: ApprovalStore) -> None:
    digest = _seen(store, "s1")
    store.refuse(digest, "site policy: strategy fedprox is not allowed")
    (report,) = store.unreported(lambda _: True)  # a refusal overrides a pre-approval
    assert report.decision is Decision.REFUSED and "fedprox" in (report.reason or "")


def _writer(path: str, which: str, n: int) -> None:
    store = ApprovalStore(Path(path))
    for i in range(n):
        if which == "node":  # the running node: records studies, marks reports
            digest = f"{i:08x}" + "a" * 56
            store.saw(f"study-{i}", digest, f"s{i}", CONFIG, ["a"])
            for report in store.unreported(lambda _: False):
                store.reported(report)
        else:  # the steward's CLI, approving what it finds
            for st in store.studies():
                if st.decision is None:
                    store.decide(st.hash, Decision.APPROVED, None)


def test_the_cli_and_the_running_node_write_the_file_at_once(tmp_path: Path) -> None:
    path = tmp_path / "approvals.db"
    ApprovalStore(path)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), w, 40)) for w in ("node", "cli")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    store = ApprovalStore(path)
    for st in store.studies():  # whatever the CLI did not reach yet is still there, whole
        if st.decision is None:
            store.decide(st.hash, Decision.APPROVED, None)
    studies = store.studies()
    assert len(studies) == 40 and all(s.decision is not None for s in studies)
    with sqlite3.connect(path) as db:  # each approved exactly once: no write was lost or doubled
        assert db.execute("SELECT count(*), count(DISTINCT hash) FROM decisions").fetchone() \
            == (40, 40)


def test_the_rule_every_site_approves_one_no_ends_it() -> None:
    ok, no = (Decision.APPROVED, None), (Decision.REJECTED, "no consent for this use")
    assert verdict(["a", "b"], {"a": ok}).kind is VerdictKind.WAITING
    assert verdict(["a", "b"], {"a": ok, "b": ok}).kind is VerdictKind.APPROVED
    got = verdict(["a", "b"], {"a": ok, "b": no})
    assert got.kind is VerdictKind.REJECTED and "site b rejected" in (got.reason or "")
    assert "no consent" in (got.reason or "")
    got = verdict(["a", "b"], {"a": ok}, expired=True)
    assert got.kind is VerdictKind.EXPIRED and got.waiting == ("b",)
    assert withdrawn(Decision.REVOKED) and withdrawn(Decision.REFUSED)
    assert not withdrawn(Decision.APPROVED) and not withdrawn(None)
