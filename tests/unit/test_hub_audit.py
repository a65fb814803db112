"""The hub's audit trail (fedcare.hub.audit): its key, the entries the hub's parts append,
and that a trail that cannot write never fails the hub."""

from __future__ import annotations

import hashlib
from pathlib import Path

from fedcare.governance.audit_log import EventKind, read, verify
from fedcare.hub.audit import AuditTrail, hub_log_and_keys, task_parts, updates_digest
from fedcare.hub.service import HubService, NeverRevoked

DIGEST = "ab" * 32


def test_the_key_is_made_once_owner_only_and_published_beside_the_log(tmp_path: Path) -> None:
    trail = AuditTrail.for_data_dir(tmp_path)
    key = tmp_path / "audit" / "hub-audit.key"
    assert key.stat().st_mode & 0o777 == 0o600
    public = (tmp_path / "audit" / "hub-audit.pub.pem").read_bytes()
    trail.study_submitted("s1", "study", DIGEST, ["a", "b"])
    again = AuditTrail.for_data_dir(tmp_path)  # a restarted hub keeps its key
    assert (tmp_path / "audit" / "hub-audit.pub.pem").read_bytes() == public
    again.study_ended("s1", "completed", None)
    path, keys = hub_log_and_keys(tmp_path)
    verdict = verify(path, keys)
    assert verdict.ok and verdict.entries == 2
    assert hub_log_and_keys(tmp_path.parent / tmp_path.name)[0] == path


def test_site_enrolled_on_first_hello_and_on_a_new_certificate_only(tmp_path: Path) -> None:
    hub = HubService(tmp_path / "hub", revocation=NeverRevoked())
    for serial in ("0a", "0A", "0a", "0b"):
        hub.hello("alpha", serial, "1", [{"name": "x", "rows": 10}], "session")
    hub.state.audit.flush()  # the hub's trail writes from its own thread
    entries = list(read(tmp_path / "hub" / "audit" / "hub-audit.jsonl"))
    assert [(e.kind, e.details["serial"], e.details["previous_serial"]) for e in entries] == [
        (EventKind.SITE_ENROLLED, "0a", None), (EventKind.SITE_ENROLLED, "0b", "0a")]


def test_aggregated_names_the_updates_it_includes_by_digest(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path)
    trail.task_sent("s1/r1/fit/a", "fit", 1, "a", "h:a")
    trail.update_received("s1/r1/fit/a", "a", DIGEST, 100, error=False)
    trail.update_received("s1/r1/fit/b", "b", "cd" * 32, 100, error=False)
    trail.update_received("s1/r1/evaluate/a", "a", "ef" * 32, 10, error=False)
    trail.update_received("s1/r1/fit/c", "c", "01" * 32, 10, error=True)
    trail.aggregated("s1", 1, ["b", "a"])
    last = list(read(tmp_path / "hub-audit.jsonl"))[-1]
    assert last.kind is EventKind.AGGREGATED
    assert last.details["updates"] == {"a": DIGEST, "b": "cd" * 32}
    assert last.details["digest"] == updates_digest("s1", 1, {"a": DIGEST, "b": "cd" * 32})
    assert last.details["sites"] == ["a", "b"]


def test_model_released_carries_the_files_digests(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path / "audit")
    out = tmp_path / "out"
    out.mkdir()
    trail.model_released("s1", out)  # nothing written yet: nothing released
    (out / "model.safetensors").write_bytes(b"model")
    trail.model_released("s1", out)
    (entry,) = read(tmp_path / "audit" / "hub-audit.jsonl")
    assert entry.details["digest"] == hashlib.sha256(b"model").hexdigest()


def test_a_trail_that_cannot_write_reports_and_never_raises(tmp_path: Path) -> None:
    AuditTrail(None).study_ended("s1", "failed", "x")  # records nothing, no folder
    errors: list[str] = []
    trail = AuditTrail(tmp_path, on_error=errors.append)
    trail.study_ended("s1", "completed", None)
    with open(tmp_path / "hub-audit.jsonl", "ab") as fh:
        fh.write(b'{"torn')  # a crash mid-append: the steward must look first
    trail.study_ended("s2", "completed", None)
    assert len(errors) == 1 and "study_ended s2" in errors[0]
    trail.update_received("../bad id", "a", DIGEST, 1, error=False)  # refused subject
    assert len(errors) == 2


def test_a_background_trail_writes_in_call_order(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path, background=True)
    for i in range(20):
        trail.study_ended(f"s{i}", "completed", None)
    trail.flush()
    assert [e.subject for e in read(tmp_path / "hub-audit.jsonl")] == [
        f"s{i}" for i in range(20)]


def test_task_parts() -> None:
    assert task_parts("s1/r3/fit/alpha") == ("s1", 3, "fit", "alpha")
    assert task_parts("s1/r3/a2/secagg_mask/alpha") == ("s1", 3, "secagg_mask", "alpha")
    assert task_parts("junk") == ("junk", None, "", "")
