"""The hub's signed audit trail (:mod:`fedcare.governance.audit_log`), wired into the hub.

The hub makes its own **Ed25519** audit key at its first start, in its state folder
(``DATA/audit/hub-audit.key``, owner-only), and publishes the public half beside the log
(``DATA/audit/hub-audit.pub.pem``) for auditors: ``fedcare audit verify --hub-dir DATA``.
It appends one signed entry (``DATA/audit/hub-audit.jsonl``) for each of:

* ``site_enrolled``: a site's first hello, or a hello with a new certificate serial;
* ``study_submitted``: study id, content hash, sites;
* ``task_sent``: task id, kind, round, site and the payload digest the node checks;
* ``update_received``: task id, site and the SHA-256 of the reply's bytes, never its content;
* ``aggregated``: study, round, the sites included and a digest over their updates' digests;
* ``model_released``: the SHA-256 of ``model.safetensors`` (and ``model.xgb.json``);
* ``study_ended``: the status a study's run ended with (completed, failed, paused);
* the output airlock (:mod:`fedcare.hub.airlock`), each with the export's SHA-256, never its
  content: ``export_requested`` (study, file, requester), ``export_checked`` (refused or
  not, the findings' count and flags), ``export_decided`` (one steward's decision),
  ``export_approved`` / ``export_rejected`` (the request's outcome) and
  ``export_downloaded``.
* ``user_added`` / ``user_revoked``: a hub user, their role and site, and who did it (never
  the token or its hash).

An entry that cannot be written (a torn log the steward must look at, a full disk) is logged
as an error and in the hub's event log; the hub goes on serving (the trail records, it does
not gate the protocol).

Each entry is one ``fsync``: four per site per round (a task and a reply, to fit and to
evaluate), which cost the networked benchmark (10 sites) 100-200 ms per round when written
on the round's path. The hub's trail (``background=True``) therefore appends from one writer
thread, in the order the hub's parts call it: nothing waits for the disk. The trade-off: a
hub killed (``kill -9``, power cut) loses the entries still queued (the last few ms); the
database's task and reply rows remain. :meth:`AuditTrail.flush` waits for the queue (the
hub's stop does).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedcare.core.files import atomic_write
from fedcare.governance.audit_log import (
    AuditError,
    EventKind,
    OrderedAppender,
    PublicKey,
    Signer,
    append,
    canonical,
    generate_key,
    load_private_key,
    load_public_key,
    public_pem,
    save_private_key,
)

log = logging.getLogger("fedcare.hub")

AUDIT_DIR = "audit"
LOG_FILE = "hub-audit.jsonl"
KEY_FILE = "hub-audit.key"
PUBLIC_FILE = "hub-audit.pub.pem"
#: An aggregated entry lists its updates' digests while there are at most this many sites
#: (its details must stay small); its ``digest`` covers them all either way.
MAX_LISTED_UPDATES = 32


def task_parts(task_id: str) -> tuple[str, int | None, str, str]:
    """(study, round, kind, site) of a task id ``study/rN[/aK]/kind/site`` (round None and
    empty parts when it is not one)."""
    parts = task_id.split("/")
    if len(parts) < 4 or not parts[1].startswith("r") or not parts[1][1:].isdigit():
        return parts[0] if parts else "", None, "", ""
    return parts[0], int(parts[1][1:]), parts[-2], parts[-1]


def updates_digest(study_id: str, round_: int, updates: Mapping[str, str]) -> str:
    """The digest an ``aggregated`` entry carries: SHA-256 of the canonical JSON of the study,
    the round and each included site's update digest."""
    return hashlib.sha256(canonical({"study": study_id, "round": round_,
                                     "updates": dict(updates)})).hexdigest()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def hub_log_and_keys(hub_dir: Path) -> tuple[Path, dict[str, PublicKey]]:
    """The hub's audit log and its published public key, from its state folder (``DATA``,
    or the hub's kit folder whose state folder is ``KIT/data``)."""
    hub_dir = Path(hub_dir)
    for folder in (hub_dir / AUDIT_DIR, hub_dir / "data" / AUDIT_DIR, hub_dir):
        if (folder / LOG_FILE).is_file():
            return folder / LOG_FILE, {"hub": load_public_key(folder / PUBLIC_FILE)}
    raise AuditError(f"no hub audit log ({AUDIT_DIR}/{LOG_FILE}) in {hub_dir} or "
                     f"{hub_dir / 'data'}: is it the hub's state folder?")


class AuditTrail:
    """The hub's audit log and key (``folder`` None: a trail that records nothing, for
    embeddings without a state folder). ``on_error``: told when an entry cannot be written."""

    def __init__(self, folder: Path | None, *,
                 on_error: Callable[[str], None] | None = None,
                 background: bool = False) -> None:
        self.folder = folder
        self._on_error = on_error
        self._appender = OrderedAppender(self._append, background=background
                                         and folder is not None, name="hub-audit")
        self._lock = threading.Lock()
        #: (study, round) -> site -> digest of its fit reply, for the aggregated entry.
        self._updates: dict[tuple[str, int], dict[str, str]] = {}
        self.signer: Signer | None = None
        if folder is None:
            return
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_file = folder / KEY_FILE
        if key_file.is_file():
            key = load_private_key(key_file)
        else:
            key = generate_key()
            save_private_key(key, key_file)
            log.info("made the hub's audit key %s", key_file)
        pem = public_pem(key)
        public = folder / PUBLIC_FILE
        if not public.is_file() or public.read_bytes() != pem:
            atomic_write(public, pem)
        self.signer = Signer("hub", key)

    @classmethod
    def for_data_dir(cls, data_dir: Path, *, on_error: Callable[[str], None] | None = None,
                     background: bool = False) -> AuditTrail:
        return cls(Path(data_dir) / AUDIT_DIR, on_error=on_error, background=background)

    def flush(self) -> None:
        """Wait until every entry recorded so far is written (background trail)."""
        self._appender.flush()

    @property
    def path(self) -> Path | None:
        return None if self.folder is None else self.folder / LOG_FILE

    @property
    def public_key_file(self) -> Path | None:
        return None if self.folder is None else self.folder / PUBLIC_FILE

    def record(self, kind: EventKind, subject: str, details: Mapping[str, Any]) -> None:
        """Append one signed entry (queued, with ``background``); a failure is reported,
        never raised into the hub."""
        self._appender.record(kind, subject, details)

    def _append(self, kind: EventKind, subject: str, details: Mapping[str, Any]) -> None:
        if self.signer is None or self.path is None:
            return
        try:
            append(self.path, self.signer, kind, subject, details)
        except (AuditError, OSError) as exc:
            message = f"audit entry {kind.value} {subject} not written: {exc}"
            log.error("%s", message)
            if self._on_error is not None:
                try:
                    self._on_error(message)
                except Exception:
                    log.exception("cannot record the audit failure")

    # -- what the hub does -------------------------------------------------------------
    def site_enrolled(self, site: str, serial: str, previous: str | None) -> None:
        self.record(EventKind.SITE_ENROLLED, f"site:{site}",
                    {"site": site, "serial": serial.lower(),
                     "previous_serial": None if previous is None else previous.lower()})

    def study_submitted(self, study_id: str, name: str, config_hash: str,
                        sites: Sequence[str]) -> None:
        self.record(EventKind.STUDY_SUBMITTED, study_id,
                    {"study": study_id, "name": name[:200], "content_hash": config_hash,
                     "sites": list(sites)})

    def task_sent(self, task_id: str, kind: str, round_: int, site: str,
                  payload_digest: str) -> None:
        self.record(EventKind.TASK_SENT, task_id,
                    {"task": task_id, "kind": kind, "round": round_, "site": site,
                     "payload_digest": payload_digest})

    def update_received(self, task_id: str, site: str, digest: str, size: int, *,
                        error: bool) -> None:
        study, round_, kind, _site = task_parts(task_id)
        if kind == "fit" and round_ is not None and not error:
            with self._lock:
                self._updates.setdefault((study, round_), {})[site] = digest
        self.record(EventKind.UPDATE_RECEIVED, task_id,
                    {"task": task_id, "kind": kind, "round": round_, "site": site,
                     "digest": digest, "bytes": size, "error": error})

    def aggregated(self, study_id: str, round_: int, sites: Sequence[str]) -> None:
        with self._lock:
            known = self._updates.pop((study_id, round_), {})
        included = {s: known[s] for s in sorted(sites) if s in known}
        details: dict[str, Any] = {"study": study_id, "round": round_,
                                   "sites": sorted(sites),
                                   "digest": updates_digest(study_id, round_, included)}
        if len(included) <= MAX_LISTED_UPDATES:
            details["updates"] = included
        self.record(EventKind.AGGREGATED, study_id, details)

    def model_released(self, study_id: str, out: Path) -> None:
        files = {name: file_digest(out / name) for name in ("model.safetensors",
                                                            "model.xgb.json")
                 if (out / name).is_file()}
        if "model.safetensors" not in files:
            return
        self.record(EventKind.MODEL_RELEASED, study_id,
                    {"study": study_id, "digest": files["model.safetensors"], "files": files})

    def site_decided(self, study_id: str, site: str, decision: str, content_hash: str,
                     reason: str | None) -> None:
        """A site's node reported its steward's decision on a study (``refused``: the node
        refused it itself, e.g. by its site policy)."""
        kind = {"approved": EventKind.STUDY_APPROVED,
                "revoked": EventKind.STUDY_REVOKED}.get(decision, EventKind.STUDY_REJECTED)
        self.record(kind, study_id,
                    {"study": study_id, "site": site, "decision": decision,
                     "content_hash": content_hash,
                     "reason": None if reason is None else reason[:500]})

    def study_ended(self, study_id: str, status: str, error: str | None) -> None:
        self.record(EventKind.STUDY_ENDED, study_id,
                    {"study": study_id, "status": status,
                     "error": None if error is None else error[:500]})

    # -- the output airlock ------------------------------------------------------------
    def export_requested(self, export_id: str, study_id: str, artifact: str, requester: str,
                         digest: str, size: int) -> None:
        self.record(EventKind.EXPORT_REQUESTED, export_id,
                    {"export": export_id, "study": study_id, "artifact": artifact,
                     "requester": requester, "digest": digest, "bytes": size})

    def export_checked(self, export_id: str, digest: str, status: str, min_cell: int,
                       refusals: int, flags: Sequence[str]) -> None:
        self.record(EventKind.EXPORT_CHECKED, export_id,
                    {"export": export_id, "digest": digest, "status": status,
                     "min_cell": min_cell, "refusals": refusals,
                     "flags": [f[:200] for f in flags[:8]]})

    def export_decided(self, export_id: str, digest: str, site: str, user: str,
                       approve: bool, reason: str) -> None:
        self.record(EventKind.EXPORT_DECIDED, export_id,
                    {"export": export_id, "digest": digest, "site": site, "user": user,
                     "approve": approve, "reason": reason[:500]})

    def export_outcome(self, export_id: str, digest: str, approved: bool,
                       sites: Sequence[str]) -> None:
        """``export_approved`` (``sites``: the approvers) or ``export_rejected`` (the
        rejecters)."""
        kind = EventKind.EXPORT_APPROVED if approved else EventKind.EXPORT_REJECTED
        self.record(kind, export_id, {"export": export_id, "digest": digest,
                                      "sites": sorted(sites)})

    def export_downloaded(self, export_id: str, digest: str, user: str) -> None:
        self.record(EventKind.EXPORT_DOWNLOADED, export_id,
                    {"export": export_id, "digest": digest, "user": user})

    def user_added(self, name: str, details: Mapping[str, Any]) -> None:
        self.record(EventKind.USER_ADDED, f"user:{name}", dict(details))

    def user_revoked(self, name: str, details: Mapping[str, Any]) -> None:
        self.record(EventKind.USER_REVOKED, f"user:{name}", dict(details))
