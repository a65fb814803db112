"""A node's own signed audit log (:mod:`fedcare.governance.audit_log`): everything done with
the site's data, signed with the site's key (EC P-256, ``site.key`` of its startup kit), so
the certificate the coordinator already holds (``site.crt``) verifies it and no second key is
distributed. The log is ``STATE/audit.jsonl`` (``fedcare audit verify --node-dir KIT``).

Entries (log and actor ``site:NAME``):

* ``study_loaded``: a study read for the site's data (study id, name, content hash recomputed
  at the site, dataset, and the refusal if the site refuses it);
* ``update_sent``: a task answered (task id, kind, round, the SHA-256 of the reply's bytes);
* ``privacy_charged``: the epsilon a task added to the site's privacy ledger, and the total;
* ``task_refused``: a task the site did not run, and why;
* ``study_code_failed``: a run of a study's own code (model ``custom``) that failed in the
  site's sandbox or whose output the site refused: the study, the function (fit/scores),
  the sandbox status and fedcare's reason (never the code's own output).
* ``policy_refused``: a study the site's policy refuses (the rules it breaks, and the full
  reason with the site's own figures, which the hub is never told);
* ``metrics_withheld``: the metric names the site's policy kept out of a task's reply.

Citing the hub: a task carries no reference to the hub's ``task_sent`` entry (the wire
format is unchanged), so a node's entry names the task by its id (the entry's ``subject``, the
hub's ``task_sent`` subject too) and the payload digest it checked (``payload_digest``, the
hub's entry holds the same): an auditor matches the two logs on (task id, payload digest).
The hub's ``update_received`` holds the same reply digest as the node's ``update_sent``.

A failure to write is logged as an error and the node goes on serving (as for the hub).
The agent's log (``background=True``) is written by one thread in call order, so its fsync is
not between a computed reply and its upload; :meth:`NodeAudit.flush` (the agent's close)
waits for it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedcare.core.wire import peek_header
from fedcare.governance.audit_log import (
    AuditError,
    EventKind,
    OrderedAppender,
    PublicKey,
    Signer,
    append,
    load_private_key,
    load_public_key,
)

log = logging.getLogger("fedcare.node")

LOG_FILE = "audit.jsonl"


def node_log_and_keys(kit_dir: Path, state_dir: Path | None = None
                      ) -> tuple[Path, dict[str, PublicKey]]:
    """A node's audit log (``STATE/audit.jsonl``, default state folder ``KIT/state``) and the
    site certificate that verifies it (``site.crt`` of the kit)."""
    from fedcare.pki.trust import load_node_config

    kit = load_node_config(kit_dir)
    path = Path(state_dir or Path(kit_dir) / "state") / LOG_FILE
    if not path.is_file():
        raise AuditError(f"site {kit.site} has no audit log {path} (has its node run?)")
    return path, {f"site:{kit.site}": load_public_key(kit.tls.cert)}


class NodeAudit:
    """The site's audit log in ``state_dir`` signed with ``key_file`` (``site.key``)."""

    def __init__(self, site: str, key_file: Path, state_dir: Path, *,
                 background: bool = False) -> None:
        self.site = site
        self.path = Path(state_dir) / LOG_FILE
        self.signer: Signer | None = None
        try:
            self.signer = Signer(f"site:{site}", load_private_key(key_file))
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except (AuditError, OSError) as exc:
            log.error("site %s keeps no audit log: %s", site, exc)
        self._appender = OrderedAppender(self._append, background=background
                                         and self.signer is not None, name="node-audit")

    def flush(self) -> None:
        """Wait until every entry recorded so far is written."""
        self._appender.flush()

    def record(self, kind: EventKind, subject: str, details: Mapping[str, Any]) -> None:
        self._appender.record(kind, subject, details)

    def _append(self, kind: EventKind, subject: str, details: Mapping[str, Any]) -> None:
        if self.signer is None:
            return
        try:
            append(self.path, self.signer, kind, subject, details)
        except (AuditError, OSError) as exc:
            log.error("audit entry %s %s not written: %s", kind.value, subject, exc)

    def study_loaded(self, study_id: str, name: str, content_hash: str, dataset: str | None,
                     refusal: str | None) -> None:
        self.record(EventKind.STUDY_LOADED, study_id,
                    {"study": study_id, "name": name[:200], "content_hash": content_hash,
                     "dataset": dataset, "refusal": None if refusal is None else refusal[:500]})

    def task_done(self, task_id: str, payload_digest: str, reply: bytes,
                  epsilon_before: float | None = None,
                  epsilon_after: float | None = None) -> None:
        """A reply computed for a task: ``privacy_charged`` when the site's ledger grew
        (epsilon before and after the task), then ``update_sent`` with the reply's digest, or
        ``task_refused`` when the reply is an error (the site refused or failed the task)."""
        if epsilon_before is not None and epsilon_after is not None \
                and epsilon_after > epsilon_before:
            self.privacy_charged(task_id, epsilon_after - epsilon_before, epsilon_after)
        try:
            header = peek_header(reply)
        except Exception:  # noqa: BLE001 (an unreadable reply is still recorded by digest)
            header = {}
        if header.get("type") == "error":
            self.refused(task_id, payload_digest,
                         f"{header.get('error_type', 'error')}: {header.get('message', '')}")
            return
        self.record(EventKind.UPDATE_SENT, task_id,
                    {"task": task_id, "kind": str(header.get("kind", _kind_of(task_id))),
                     "round": _round_of(header), "payload_digest": payload_digest,
                     "digest": hashlib.sha256(reply).hexdigest(), "bytes": len(reply)})

    def privacy_charged(self, task_id: str, epsilon: float, total: float) -> None:
        self.record(EventKind.PRIVACY_CHARGED, task_id,
                    {"task": task_id, "epsilon": round(epsilon, 9),
                     "epsilon_total": round(total, 9)})

    def policy_refused(self, study_id: str, content_hash: str, rules: list[str],
                       why: str) -> None:
        self.record(EventKind.POLICY_REFUSED, study_id,
                    {"study": study_id, "content_hash": content_hash, "rules": rules[:50],
                     "why": why[:1500]})

    def metrics_withheld(self, task_id: str, names: list[str]) -> None:
        self.record(EventKind.METRICS_WITHHELD, task_id,
                    {"task": task_id, "metrics": sorted(n[:64] for n in names)[:200]})

    def refused(self, task_id: str, payload_digest: str, why: str) -> None:
        self.record(EventKind.TASK_REFUSED, task_id,
                    {"task": task_id, "payload_digest": payload_digest, "why": why[:500]})


    def study_code_failed(self, study_id: str, op: str, status: str, reason: str,
                          seconds: float) -> None:
        self.record(EventKind.STUDY_CODE_FAILED, study_id,
                    {"study": study_id, "function": op[:20], "status": status[:40],
                     "reason": reason[:500], "seconds": round(seconds, 3)})


def spent_epsilon(ledger: Any) -> float | None:
    """The epsilon a site's privacy ledger has spent (None: no ledger, or it cannot be read,
    which the ledger reports itself)."""
    if ledger is None:
        return None
    try:
        return float(ledger.spent().epsilon)
    except Exception:  # noqa: BLE001 (the ledger's own checks report a broken ledger)
        return None


def _kind_of(task_id: str) -> str:
    parts = task_id.split("/")
    return parts[-2] if len(parts) >= 4 else ""


def _round_of(header: dict[str, Any]) -> int | None:
    value = header.get("round")
    return value if isinstance(value, int) and not isinstance(value, bool) else None
