"""The signed audit trail: every kind of tampering is found and the first bad entry named."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import multiprocessing
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedcare.governance.audit_log import (
    GENESIS,
    AuditError,
    Citation,
    EventKind,
    Head,
    ProblemKind,
    SignedHead,
    Signer,
    append,
    canonical,
    export,
    generate_key,
    line_hash,
    load_private_key,
    load_public_key,
    public_pem,
    read,
    save_private_key,
    sign_head,
    verify,
    verify_export,
)

HUB = Signer("hub", generate_key())
ALICE = Signer("user:alice", generate_key())
SITE = Signer("site:alpha", ec.generate_private_key(ec.SECP256R1()))
KEYS = {s.actor: s.key.public_key() for s in (HUB, ALICE, SITE)}
DIGEST = "ab" * 32


def _write(path: Path, n: int = 5) -> list[bytes]:
    """A hub log of ``n`` entries by three actors (Ed25519 and P-256 keys)."""
    kinds: list[tuple[Signer, EventKind, dict[str, object]]] = [
        (ALICE, EventKind.STUDY_SUBMITTED, {}), (HUB, EventKind.STUDY_APPROVED, {}),
        (HUB, EventKind.TASK_SENT, {"round": 1}),
        (SITE, EventKind.UPDATE_RECEIVED, {"digest": DIGEST, "round": 1}),
        (HUB, EventKind.AGGREGATED, {"digest": DIGEST, "sites": ["alpha", "beta"]})]
    for i in range(n):
        signer, kind, details = kinds[i % len(kinds)]
        append(path, signer, kind, "study-3f1c", details, log="hub")
    return path.read_bytes().splitlines()


def _set(path: Path, lines: list[bytes], *, torn: bool = False) -> None:
    path.write_bytes(b"\n".join(lines) + (b"" if torn else b"\n"))


def _resign(doc: dict[str, object], signer: Signer) -> bytes:
    """A line an attacker holding ``signer``'s key would write for ``doc``."""
    from fedcare.governance.audit_log import _sign, _signed_part

    doc = {**doc, "alg": signer.alg}
    doc["sig"] = _sign(signer.key, _signed_part(doc))
    return canonical(doc)


# --- the good path ------------------------------------------------------------------------
def test_a_written_log_verifies_with_entries_chained_from_genesis(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = _write(log)
    verdict = verify(log, KEYS)
    assert verdict.ok and verdict.problem is None and verdict.entries == 5
    docs = [json.loads(line) for line in lines]
    assert [d["seq"] for d in docs] == [1, 2, 3, 4, 5]
    assert docs[0]["prev"] == GENESIS
    assert all(d["prev"] == line_hash(p) for d, p in zip(docs[1:], lines, strict=False))
    assert {d["alg"] for d in docs} == {"ed25519", "ecdsa-p256-sha256"}
    assert verdict.head == Head(5, line_hash(lines[-1]))
    assert all(line == canonical(json.loads(line)) for line in lines)
    assert [e.kind for e in read(log)][:2] == [EventKind.STUDY_SUBMITTED, EventKind.STUDY_APPROVED]


def test_an_empty_log_is_valid_and_a_missing_one_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert verify(tmp_path / "empty.jsonl", KEYS).ok
    with pytest.raises(AuditError, match="does not exist"):
        verify(tmp_path / "absent.jsonl", KEYS)


@pytest.fixture()
def hub_key_files(tmp_path: Path) -> tuple[Path, Path]:
    save_private_key(HUB.key, tmp_path / "hub_audit.key")
    (tmp_path / "hub_audit.pub").write_bytes(public_pem(HUB.key))
    return tmp_path / "hub_audit.key", tmp_path / "hub_audit.pub"


def test_keys_round_trip_through_pem(tmp_path: Path, hub_key_files: tuple[Path, Path]) -> None:
    key_file, pub_file = hub_key_files
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    signer = Signer("hub", load_private_key(key_file))
    append(tmp_path / "a.jsonl", signer, "site_enrolled", "alpha")
    assert verify(tmp_path / "a.jsonl", {"hub": load_public_key(pub_file)}).ok


def test_a_site_key_and_certificate_from_a_kit_sign_and_verify(tmp_path: Path) -> None:
    from tests.unit.helpers import ledger_key

    kit_key = ledger_key()  # the site's EC P-256 key pair as the privacy ledger uses it
    assert kit_key.private is not None
    signer = Signer("site:alpha", kit_key.private)
    append(tmp_path / "site.jsonl", signer, "task_received", "study-1",
           cites=[Citation("hub", 3, DIGEST)])
    assert verify(tmp_path / "site.jsonl", {"site:alpha": kit_key.public}).ok


def test_a_site_kits_key_files_sign_and_its_certificate_verifies(tmp_path: Path) -> None:
    from fedcare.pki import certs

    now = certs.utc_now()
    ca = certs.build_authority("fed-1", now=now, valid_days=30)
    key = certs.new_private_key()
    cert = certs.issue_site_certificate(ca, key.public_key(), "alpha", "fed-1", not_before=now,
                                        not_after=now + dt.timedelta(days=1))
    (tmp_path / "site.key").write_bytes(certs.private_key_pem(key))
    (tmp_path / "site.crt").write_bytes(certs.certificate_pem(cert))
    signer = Signer("site:alpha", load_private_key(tmp_path / "site.key"))
    append(tmp_path / "site.jsonl", signer, "task_refused", "study-1", {"rule": "max_rounds"})
    keys = {"site:alpha": load_public_key(tmp_path / "site.crt")}
    assert verify(tmp_path / "site.jsonl", keys).ok
    assert not verify(tmp_path / "site.jsonl", {"site:alpha": SITE.key.public_key()}).ok


# --- every kind of tampering, the entry named ---------------------------------------------
def test_an_edited_entry_is_named_by_its_bad_signature(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = _write(log)
    doc = json.loads(lines[2])
    doc["subject"] = "study-other"
    lines[2] = canonical(doc)
    _set(log, lines)
    verdict = verify(log, KEYS)
    assert not verdict.ok and verdict.problem is not None
    assert (verdict.problem.kind, verdict.problem.seq, verdict.problem.line) == (
        ProblemKind.BAD_SIGNATURE, 3, 3)
    assert verdict.entries == 2 and "edited after signing" in str(verdict.problem)


def test_an_entry_re_signed_with_the_actors_key_breaks_the_chain_at_the_next(
        tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = _write(log)
    doc = json.loads(lines[1])
    doc["details"] = {"note": "rewritten"}
    lines[1] = _resign(doc, HUB)  # the hub itself rewrites its own entry 2
    _set(log, lines)
    problem = verify(log, KEYS).problem
    assert problem is not None and (problem.kind, problem.seq) == (ProblemKind.CHAIN_BROKEN, 3)


def test_a_deleted_entry_is_named(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = _write(log)
    _set(log, lines[:2] + lines[3:])
    problem = verify(log, KEYS).problem
    assert problem is not None and (problem.kind, problem.seq, problem.line) == (
        ProblemKind.DELETED, 4, 3)
    assert "seq 3 missing" in problem.reason


def test_a_deleted_first_entry_is_named(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = _write(log)
    _set(log, lines[1:])
    problem = verify(log, KEYS).problem
    assert problem is not None and (problem.kind, problem.seq) == (ProblemKind.DELETED, 2)


def test_reordered_entries_are_named(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = _write(log)
    lines[1], lines[2] = lines[2], lines[1]
    _set(log, lines)
    problem = verify(log, KEYS).problem
    assert problem is not None and (problem.kind, problem.seq, problem.line) == (
        ProblemKind.REORDERED, 3, 2)


def test_an_inserted_or_replayed_entry_is_named(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = _write(log)
    _set(log, [*lines[:3], lines[1], *lines[3:]])  # replay entry 2 after entry 3
    problem = verify(log, KEYS).problem
    assert problem is not None and (problem.kind, problem.seq, problem.line) == (
        ProblemKind.INSERTED, 2, 4)


def test_an_inserted_entry_signed_by_a_real_actor_is_named_at_the_displaced_one(
        tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = _write(log)
    doc = {**json.loads(lines[2]), "kind": "study_revoked", "details": {}}
    inserted = _resign(doc, HUB)  # a valid seq 3 after seq 2, signed by the hub
    _set(log, [*lines[:2], inserted, *lines[2:]])
    problem = verify(log, KEYS).problem
    assert problem is not None and (problem.kind, problem.seq, problem.line) == (
        ProblemKind.INSERTED, 3, 4)


def test_a_forged_entry_without_the_actors_key_is_named(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = _write(log)
    forged = {**json.loads(lines[4]), "seq": 6, "prev": line_hash(lines[4]),
              "kind": "model_released", "details": {"digest": DIGEST}}
    _set(log, [*lines, _resign(forged, Signer("hub", generate_key()))])  # not the hub's key
    problem = verify(log, KEYS).problem
    assert problem is not None and (problem.kind, problem.seq) == (ProblemKind.BAD_SIGNATURE, 6)


def test_an_entry_by_an_unknown_actor_is_named(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _write(log, 2)
    append(log, Signer("user:mallory", generate_key()), "export_approved", "study-3f1c",
           log="hub")
    problem = verify(log, KEYS).problem
    assert problem is not None and (problem.kind, problem.seq) == (ProblemKind.UNKNOWN_ACTOR, 3)


def test_a_signature_of_the_wrong_algorithm_for_the_actor_is_refused(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = _write(log, 1)
    # alice's entry re-signed with a P-256 key: her registered key is Ed25519
    lines[0] = _resign(json.loads(lines[0]), Signer("user:alice",
                                                    ec.generate_private_key(ec.SECP256R1())))
    _set(log, lines)
    problem = verify(log, KEYS).problem
    assert problem is not None and problem.kind == ProblemKind.BAD_SIGNATURE


@pytest.mark.parametrize("text", [b"not json", b"[1,2]", b'{"seq": 3}'])
def test_a_line_that_is_not_an_entry_is_named(tmp_path: Path, text: bytes) -> None:
    log = tmp_path / "audit.jsonl"
    lines = _write(log)
    lines[3] = text
    _set(log, lines)
    problem = verify(log, KEYS).problem
    assert problem is not None and problem.line == 4
    assert problem.kind in (ProblemKind.BAD_JSON, ProblemKind.BAD_FIELD)


def test_an_overlong_line_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = _write(log, 3)
    _set(log, [lines[0], b"x" * 5_000_000, lines[1]])
    problem = verify(log, KEYS).problem
    assert problem is not None and (problem.kind, problem.line) == (ProblemKind.BAD_JSON, 2)
    assert "longer than" in problem.reason


def test_a_respelt_line_with_the_same_content_is_refused(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = _write(log)
    lines[2] = json.dumps(json.loads(lines[2]), indent=1).replace("\n", "").encode()
    _set(log, lines)
    problem = verify(log, KEYS).problem
    assert problem is not None and (problem.kind, problem.line) == (ProblemKind.BAD_JSON, 3)
    assert "canonical" in problem.reason


def test_a_signature_respelt_in_base64s_spare_bits_is_refused(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = _write(log, 2)
    doc = json.loads(lines[1])
    sig = doc["sig"]  # Ed25519: 64 bytes, "==" padding; the last char has 4 spare bits
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = sig[-3]
    respelt = sig[:-3] + alphabet[alphabet.index(last) ^ 1] + sig[-2:]
    assert base64.b64decode(respelt) == base64.b64decode(sig)
    lines[1] = canonical({**doc, "sig": respelt})
    _set(log, lines)
    problem = verify(log, KEYS).problem
    assert problem is not None and (problem.kind, problem.seq) == (ProblemKind.BAD_SIGNATURE, 2)


def test_an_entry_of_another_log_spliced_in_is_named(tmp_path: Path) -> None:
    log, other = tmp_path / "audit.jsonl", tmp_path / "other.jsonl"
    lines = _write(log, 2)
    append(other, HUB, "task_sent", "x", log="hub")
    append(other, HUB, "task_sent", "x", log="hub")
    append(other, HUB, "task_sent", "x", log="hub")
    stranger = {**json.loads(other.read_bytes().splitlines()[2]), "log": "site:beta",
                "prev": line_hash(lines[1])}
    _set(log, [*lines, _resign(stranger, HUB)])
    problem = verify(log, KEYS).problem
    assert problem is not None and (problem.kind, problem.seq) == (ProblemKind.WRONG_LOG, 3)


# --- the end of the log: torn lines and anchors -------------------------------------------
def test_a_crash_mid_append_is_reported_not_accepted(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = _write(log)
    _set(log, [*lines[:-1], lines[-1][:len(lines[-1]) // 2]], torn=True)
    verdict = verify(log, KEYS)
    assert verdict.problem is not None
    assert (verdict.problem.kind, verdict.problem.line) == (ProblemKind.TORN_TAIL, 5)
    assert not verdict.ok and verdict.entries == 4
    with pytest.raises(AuditError, match="incomplete"):
        append(log, HUB, "task_sent", "study-3f1c", log="hub")


def test_a_complete_entry_missing_only_its_newline_is_still_torn(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _set(log, _write(log), torn=True)
    problem = verify(log, KEYS).problem
    assert problem is not None and (problem.kind, problem.seq) == (ProblemKind.TORN_TAIL, 5)


def test_a_cut_tail_is_found_only_with_an_anchor(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = _write(log)
    head = verify(log, KEYS).head
    _set(log, lines[:3])
    assert verify(log, KEYS).ok  # a shorter log is a valid log ...
    verdict = verify(log, KEYS, anchor=head)  # ... unless its head is known elsewhere
    assert verdict.problem is not None and verdict.problem.kind == ProblemKind.TRUNCATED
    assert "ends at seq 3" in verdict.problem.reason and "seq 5" in verdict.problem.reason


def test_a_signed_head_anchors_and_a_forged_one_does_not(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = _write(log)
    signed = sign_head(HUB, "hub", verify(log, KEYS).head)
    assert verify(log, KEYS, anchor=signed).ok
    _set(log, lines[:4])
    problem = verify(log, KEYS, anchor=signed).problem
    assert problem is not None and problem.kind == ProblemKind.TRUNCATED
    forged = sign_head(Signer("hub", generate_key()), "hub", Head(2, line_hash(lines[1])))
    problem = verify(log, KEYS, anchor=forged).problem
    assert problem is not None and problem.kind == ProblemKind.BAD_ANCHOR


def test_a_signed_head_round_trips_through_json_and_a_tampered_one_fails(
        tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _write(log, 2)
    last = append(log, HUB, "model_released", "study-3f1c", {"digest": DIGEST}, log="hub")
    signed = sign_head(HUB, "hub", last.head)
    stored = json.loads(json.dumps(signed.to_json()))
    assert verify(log, KEYS, anchor=SignedHead.from_json(stored)).ok
    stored["seq"] = 2  # a keeper lowering its published head
    problem = verify(log, KEYS, anchor=SignedHead.from_json(stored)).problem
    assert problem is not None and problem.kind == ProblemKind.BAD_ANCHOR
    with pytest.raises(AuditError, match="not a signed audit head"):
        SignedHead.from_json({**stored, "seq": "3"})


def test_a_replaced_history_does_not_extend_its_anchor(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _write(log, 3)
    anchor = verify(log, KEYS).head
    log.unlink()
    _write(log, 4)  # a new, valid log written by the same keys
    problem = verify(log, KEYS, anchor=anchor).problem
    assert problem is not None and (problem.kind, problem.seq) == (ProblemKind.ANCHOR_MISMATCH, 3)


# --- citations across logs ------------------------------------------------------------------
def test_a_node_entry_cites_the_hubs_entry_and_the_citation_is_checked(tmp_path: Path) -> None:
    hub_log, site_log = tmp_path / "hub.jsonl", tmp_path / "site.jsonl"
    sent = append(hub_log, HUB, "task_sent", "study-1", {"round": 1})
    append(site_log, SITE, "task_received", "study-1", cites=[sent.citation()])
    hub_verdict = verify(hub_log, KEYS)
    cited = next(read(site_log)).cites[0]
    assert verify(site_log, KEYS).ok and hub_verdict.confirms(cited)
    assert not hub_verdict.confirms(Citation("hub", 1, DIGEST))
    assert not hub_verdict.confirms(Citation("site:alpha", 1, cited.hash))


# --- what may not be written --------------------------------------------------------------
@pytest.mark.parametrize(("kind", "details", "match"), [
    ("update_received", {"round": 1}, "digest"),
    ("update_received", {"digest": "not-hex"}, "digest"),
    ("task_sent", {"weights": list(range(2000))}, "longer than"),
    ("task_sent", {"x": float("nan")}, "non-finite"),
    ("task_sent", {"a": {"b": {"c": {"d": {"e": {}}}}}}, "deeper"),
    ("task_sent", {"x": b"bytes"}, "plain JSON"),
    ("no_such_kind", {}, "unknown event kind"),
])
def test_bad_entries_are_refused_before_anything_is_written(
        tmp_path: Path, kind: str, details: dict[str, object], match: str) -> None:
    log = tmp_path / "audit.jsonl"
    with pytest.raises(AuditError, match=match):
        append(log, HUB, kind, "s", details)
    assert not log.exists() or log.read_bytes() == b""


def test_bad_actors_and_key_types_are_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    with pytest.raises(AuditError, match="actor"):
        Signer("root", generate_key())
    with pytest.raises(AuditError, match="Ed25519 or EC P-256"):
        Signer("hub", ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(AuditError, match="Ed25519 or EC P-256"):
        Signer("hub", rsa.generate_private_key(65537, 2048))  # type: ignore[arg-type]


def test_verifier_keys_must_be_public_audit_keys(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    append(log, HUB, "task_sent", "s")
    with pytest.raises(AuditError, match="public Ed25519 or EC P-256"):
        verify(log, {"hub": HUB.key})  # type: ignore[dict-item]
    with pytest.raises(AuditError, match="Ed25519 or EC P-256"):
        verify(log, {"hub": ec.generate_private_key(ec.SECP384R1()).public_key()})


def test_appending_to_another_logs_file_is_refused(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    append(log, HUB, "task_sent", "s")
    with pytest.raises(AuditError, match="log of 'hub'"):
        append(log, SITE, "task_received", "s")


# --- concurrency ------------------------------------------------------------------------------
def test_appends_from_many_threads_never_fork_the_chain(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"

    def worker(i: int) -> None:
        for j in range(10):
            append(log, HUB, "task_sent", f"study-{i}", {"round": j})

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    verdict = verify(log, KEYS)
    assert verdict.ok and verdict.entries == 60


def _process_worker(path: str, key_pem: bytes, n: int) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(key_pem, password=None)
    for j in range(n):
        append(Path(path), Signer("hub", key), "task_sent", "study-p", {"j": j})  # type: ignore[arg-type]


def test_appends_from_several_processes_never_interleave(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    log = tmp_path / "audit.jsonl"
    pem = HUB.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_process_worker, args=(str(log), pem, 15)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    verdict = verify(log, KEYS)
    assert verdict.ok and verdict.entries == 45


# --- export ---------------------------------------------------------------------------------------
def test_export_writes_the_window_and_the_verdict(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = _write(log)
    times = [json.loads(line)["time"] for line in lines]
    since = dt.datetime.strptime(times[1], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
    out = io.StringIO()
    verdict = export(log, out, KEYS, since=since)
    header, *rows = out.getvalue().splitlines()
    doc = json.loads(header)
    assert verdict.ok and doc["verdict"]["ok"] is True and doc["entries"] == len(rows) == 4
    assert [r.encode() for r in rows] == lines[1:]  # exactly as stored: signatures re-checkable


def test_export_of_a_tampered_log_says_so_and_stops_at_the_bad_entry(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = _write(log)
    _set(log, lines[:2] + lines[3:])
    export(log, tmp_path / "out.jsonl", KEYS)
    header, *rows = (tmp_path / "out.jsonl").read_text().splitlines()
    doc = json.loads(header)
    assert doc["verdict"]["ok"] is False and doc["verdict"]["problem"]["kind"] == "deleted"
    assert doc["verdict"]["problem"]["seq"] == 4 and len(rows) == 2
    with pytest.raises(AuditError, match="timezone"):
        export(log, io.StringIO(), KEYS, since=dt.datetime(2026, 1, 1))


def test_a_regulator_verifies_an_export_and_finds_an_edit_in_it(tmp_path: Path) -> None:
    log, out = tmp_path / "audit.jsonl", tmp_path / "export.jsonl"
    lines = _write(log)
    since = dt.datetime.strptime(json.loads(lines[2])["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
    export(log, out, KEYS, since=since.replace(tzinfo=dt.UTC))
    verdict = verify_export(out, KEYS)
    assert verdict.ok and verdict.entries == 3 and verdict.head.hash == line_hash(lines[-1])
    header, *rows = out.read_bytes().splitlines()
    doc = json.loads(rows[1])
    doc["subject"] = "other"
    out.write_bytes(b"\n".join([header, rows[0], canonical(doc), rows[2]]) + b"\n")
    problem = verify_export(out, KEYS).problem
    assert problem is not None and (problem.kind, problem.seq) == (ProblemKind.BAD_SIGNATURE, 4)


def test_an_export_missing_an_entry_does_not_verify(tmp_path: Path) -> None:
    log, out = tmp_path / "audit.jsonl", tmp_path / "export.jsonl"
    _write(log)
    export(log, out, KEYS)
    header, *rows = out.read_bytes().splitlines()
    out.write_bytes(b"\n".join([header, *rows[:-1]]) + b"\n")  # the last one dropped
    problem = verify_export(out, KEYS).problem
    assert problem is not None and "the header says 5 entries" in problem.reason
    out.write_bytes(b"\n".join([header, *rows[1:]]) + b"\n")  # the first one dropped
    assert not verify_export(out, KEYS).ok
    out.write_bytes(b"\n".join(rows) + b"\n")
    with pytest.raises(AuditError, match="header"):
        verify_export(out, KEYS)


# --- properties --------------------------------------------------------------------------------
_SMALL = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6)
                      | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3),
                      max_leaves=6)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(2, 7), data=st.data())
def test_any_deleted_swapped_or_repeated_line_is_detected(
        tmp_path_factory: pytest.TempPathFactory, n: int, data: st.DataObject) -> None:
    log = tmp_path_factory.mktemp("s") / "audit.jsonl"
    lines = _write(log, n)
    anchor = verify(log, KEYS).head
    i = data.draw(st.integers(0, n - 1), label="line")
    j = data.draw(st.integers(0, n - 1).filter(lambda k: k != i), label="other")
    how = data.draw(st.sampled_from(["delete", "swap", "repeat"]), label="how")
    changed = list(lines)
    if how == "delete":
        del changed[i]
    elif how == "swap":
        changed[i], changed[j] = changed[j], changed[i]
    else:
        changed.insert(j, lines[i])
    _set(log, changed)
    verdict = verify(log, KEYS, anchor=anchor)
    assert not verdict.ok and verdict.problem is not None
    assert verdict.problem.kind in (ProblemKind.DELETED, ProblemKind.REORDERED,
                                    ProblemKind.INSERTED, ProblemKind.CHAIN_BROKEN,
                                    ProblemKind.TRUNCATED)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.lists(st.tuples(st.sampled_from([HUB, ALICE, SITE]),
                                  st.sampled_from(["task_sent", "study_approved", "user_added"]),
                                  st.dictionaries(st.text(min_size=1, max_size=8), _SMALL,
                                                  max_size=3)),
                        min_size=1, max_size=6),
       data=st.data())
def test_any_single_byte_edit_of_any_log_is_detected(
        tmp_path_factory: pytest.TempPathFactory,
        entries: list[tuple[Signer, str, dict[str, object]]], data: st.DataObject) -> None:
    log = tmp_path_factory.mktemp("p") / "audit.jsonl"
    for signer, kind, details in entries:
        append(log, signer, kind, "study-x", details, log="hub")
    raw = log.read_bytes()
    assert verify(log, KEYS).ok
    anchor = verify(log, KEYS).head
    where = data.draw(st.integers(0, len(raw) - 1), label="offset")
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != raw[where]), label="byte")
    log.write_bytes(raw[:where] + bytes([byte]) + raw[where + 1:])
    verdict = verify(log, KEYS, anchor=anchor)
    assert not verdict.ok and verdict.problem is not None
    # the named line is the edited one (or, for an edited newline, the line it ended)
    edited_line = raw[:where].count(b"\n") + 1
    assert verdict.problem.line in (edited_line, edited_line + 1) or \
        verdict.problem.kind == ProblemKind.TRUNCATED
