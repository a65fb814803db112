"""The signed audit trail over a real networked study: the hub's log and each node's log
verify with ``fedcare audit verify``, hold the expected entries in order, cross-reference each
other (task id, payload digest, reply digest), carry digests and never update content, and any
edit, deletion, reordering or forgery of the real log is caught (exit 1, naming the entry)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from fedcare.governance.audit_log import EventKind, Signer, append, generate_key, read
from tests.integration.network import SITES, NetFederation, study_config
from tests.integration.network import net_fixture as net_fixture  # the "net" fixture

Net = Callable[..., NetFederation]
pytestmark = pytest.mark.slow


def _subsequence(wanted: list[str], kinds: list[str]) -> bool:
    it = iter(kinds)
    return all(k in it for k in wanted)


def test_hub_and_node_logs_verify_cross_reference_and_catch_tampering(
        net: Net, tmp_path: Path) -> None:
    fed = net().start()
    st = fed.run_study(study_config(rounds=2))
    study_id = st["study_id"]
    hub_data = fed.hub_dir / "data"
    fed.wait_until("the study's end in the audit log", lambda: any(
        e.kind is EventKind.STUDY_ENDED for e in read(hub_data / "audit" / "hub-audit.jsonl")),
        30)

    ok = fed.cli("audit", "verify", "--hub-dir", str(hub_data))
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stdout + ok.stderr
    hub_log = hub_data / "audit" / "hub-audit.jsonl"
    assert (hub_data / "audit" / "hub-audit.key").stat().st_mode & 0o077 == 0
    entries = list(read(hub_log))
    kinds = [e.kind.value for e in entries]
    assert kinds.count("site_enrolled") == len(SITES)
    assert _subsequence(["study_submitted", "task_sent", "update_received", "aggregated",
                         "task_sent", "update_received", "aggregated", "model_released",
                         "study_ended"], kinds), kinds
    submitted = next(e for e in entries if e.kind is EventKind.STUDY_SUBMITTED)
    assert submitted.details["content_hash"] == st["config_hash"]
    assert submitted.details["sites"] == list(SITES)
    rounds = [e.details for e in entries if e.kind is EventKind.AGGREGATED]
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(r["sites"] == sorted(SITES) and set(r["updates"]) == set(SITES) for r in rounds)
    released = next(e for e in entries if e.kind is EventKind.MODEL_RELEASED)
    import hashlib

    model = fed.artifact(study_id, "model.safetensors")
    assert released.details["digest"] == hashlib.sha256(model).hexdigest()
    assert entries[-1].details["status"] == "completed"
    # Digests, never content: every update_received carries a 64-hex digest and small fields
    # only, and no array bytes (raw, or as base64/hex text) of the model appear in the log.
    raw = hub_log.read_bytes()
    for e in entries:
        if e.kind is EventKind.UPDATE_RECEIVED:
            assert set(e.details) == {"task", "kind", "round", "site", "digest", "bytes",
                                      "error"}
    assert max(len(line) for line in raw.splitlines()) < 2048
    import base64

    chunk = model[-64:-32]
    assert chunk not in raw and base64.b64encode(chunk)[:40] not in raw
    assert chunk.hex().encode() not in raw

    sent = {e.subject: e.details for e in entries if e.kind is EventKind.TASK_SENT}
    received = {e.subject: e.details for e in entries if e.kind is EventKind.UPDATE_RECEIVED}
    for site in SITES:
        state = fed.root / "state" / site
        node = fed.cli("audit", "verify", "--node-dir", str(fed.kit(site)),
                       "--state-dir", str(state))
        assert node.returncode == 0 and f"site:{site}" in node.stdout, node.stdout + node.stderr
        mine = list(read(state / "audit.jsonl"))
        # The site approved the study (its "any" pre-approval, reported to the hub) before
        # it read it for a task.
        kinds = [e.kind for e in mine]
        assert kinds.index(EventKind.STUDY_APPROVED) < kinds.index(EventKind.STUDY_LOADED)
        for e in mine[:kinds.index(EventKind.STUDY_LOADED) + 1]:
            assert e.details["content_hash"] == st["config_hash"]
        done = [e for e in mine if e.kind is EventKind.UPDATE_SENT]
        assert done and not [e for e in mine if e.kind is EventKind.TASK_REFUSED]
        for e in done:  # the node's entry and the hub's name the same task, payload, reply
            assert sent[e.subject]["payload_digest"] == e.details["payload_digest"]
            assert received[e.subject]["digest"] == e.details["digest"]

    # Tampering with a copy of the real log: each is caught, naming the entry.
    key = hub_data / "audit" / "hub-audit.pub.pem"
    lines = raw.decode().splitlines(keepends=True)

    def check(name: str, text: str, seq: int, why: str) -> None:
        path = tmp_path / f"{name}.jsonl"
        path.write_text(text)
        bad = fed.cli("audit", "verify", "--log", str(path), "--key", str(key))
        out = " ".join(bad.stdout.split())
        assert bad.returncode == 1, (name, out, bad.stderr)
        assert f"(seq {seq})" in out and why in out, (name, out)

    doc = json.loads(lines[5])
    edited = lines[5].replace(doc["time"], doc["time"][:-2] + ("1Z" if doc["time"][-2] != "1"
                                                                else "2Z"))
    check("edited", "".join([*lines[:5], edited, *lines[6:]]), 6, "bad_signature")
    check("deleted", "".join(lines[:4] + lines[5:]), 6, "deleted")
    check("reordered", "".join([*lines[:4], lines[5], lines[4], *lines[6:]]), 6, "reordered")
    forged = tmp_path / "forged.jsonl"
    shutil.copy(hub_log, forged)
    append(forged, Signer("hub", generate_key()), EventKind.MODEL_RELEASED, study_id,
           {"digest": "0" * 64})
    check("forged", forged.read_text(), len(lines) + 1, "bad_signature")
