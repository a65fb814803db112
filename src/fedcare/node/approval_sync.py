"""Keeps the hub and the site's decisions in step, beside the node's task loop.

The task loop spends most of its time inside a long-poll, so this runs in its own thread
with its own connection: every :data:`PENDING_EVERY` seconds it asks the hub which studies
await this site's decision (``GET /v1/node/pending``), records each in the site's
:class:`~fedcare.node.approvals.ApprovalStore` (with the content hash *the node* computes
from the config: the hub's is not taken), and every :data:`REPORT_EVERY` seconds it tells the
hub each decision not yet reported (``POST /v1/node/decisions``): the steward's, made with
``fedcare node approve|reject|revoke`` while the node runs, a pre-approval in the site's
``[approval] studies``, or the node's own refusal. So a decision takes effect without a
restart, and reaches the researcher (``fedcare study status``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from fedcare.config import content_hash, parse_config
from fedcare.core.errors import FedcareError
from fedcare.governance.approvals import Decision
from fedcare.governance.audit_log import EventKind
from fedcare.node.approvals import PREAPPROVED_BY, ApprovalStore, Report
from fedcare.node.audit import NodeAudit
from fedcare.node.hub_link import HubLink, LinkError

log = logging.getLogger("fedcare.node")

#: How often the hub is asked for studies awaiting this site (seconds).
PENDING_EVERY = 2.0
#: How often the site's decisions file is checked for decisions to report (seconds).
REPORT_EVERY = 0.5
PENDING_PATH = "/v1/node/pending"
DECISIONS_PATH = "/v1/node/decisions"

_AUDIT_KIND = {Decision.APPROVED: EventKind.STUDY_APPROVED,
               Decision.REJECTED: EventKind.STUDY_REJECTED,
               Decision.REFUSED: EventKind.STUDY_REJECTED,
               Decision.REVOKED: EventKind.STUDY_REVOKED}


class ApprovalSync:
    """The thread. ``preapproved``: whether the site's node config approves a hash."""

    def __init__(self, site: str, link: HubLink, store: ApprovalStore, audit: NodeAudit, *,
                 preapproved: Callable[[str], bool], pending_every: float = PENDING_EVERY,
                 report_every: float = REPORT_EVERY) -> None:
        self.site = site
        self.link = link
        self.store = store
        self.audit = audit
        self.preapproved = preapproved
        self.pending_every = pending_every
        self.report_every = report_every
        self.stop_event = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self.run, name="approval-sync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.link.close()

    def run(self) -> None:
        waited = self.pending_every  # ask at once
        while not self.stop_event.is_set():
            try:
                if waited >= self.pending_every:
                    waited = 0.0
                    self.fetch_pending()
                self.report()
            except (LinkError, FedcareError, OSError) as exc:
                log.warning("could not sync study decisions with the hub (%s); trying again",
                            exc)
            except Exception:
                log.exception("syncing study decisions failed")
            self.stop_event.wait(self.report_every)
            waited += self.report_every

    def fetch_pending(self) -> None:
        r = self.link.request("GET", PENDING_PATH)
        if r.status_code != 200:
            raise FedcareError(f"the hub answered {r.status_code} to {PENDING_PATH}: "
                               f"{r.text[:300]}")
        for doc in r.json():
            self.seen(doc)

    def seen(self, doc: dict[str, Any]) -> str | None:
        """Record one study the hub names this site in; its content hash (None: the
        config does not parse, which is reported to the hub as a refusal)."""
        study_id = str(doc.get("study_id", ""))
        try:
            cfg = parse_config(doc["config"])
        except (FedcareError, KeyError, TypeError, ValueError) as exc:
            log.error("study %s from the hub does not parse: %s", study_id, exc)
            self.send(Report(study_id, str(doc.get("config_hash", "")), Decision.REFUSED,
                             f"the study's config does not parse at site {self.site}: "
                             f"{str(exc)[:300]}", "node"))
            return None
        digest = content_hash(cfg)  # recomputed here: the site never trusts the hub's word
        sites = [str(s) for s in doc.get("sites") or []]
        new = self.store.saw(study_id, digest, cfg.study.name, doc["config"], sites)
        if self.store.decision(digest) is None and self.preapproved(digest):
            # Listed in the site's [approval] studies (or "any"): recorded as the steward's
            # approval, so `fedcare node studies` shows it and `fedcare node revoke` works.
            self.store.decide(digest, Decision.APPROVED, "pre-approved in the site's "
                              "[approval] studies", who=PREAPPROVED_BY)
        elif new:
            log.info("study %r (%s, content hash %s) awaits this site's decision: "
                     "`fedcare node studies --show %s`", cfg.study.name, study_id, digest,
                     digest[:12])
            self.audit.record(EventKind.STUDY_PENDING, study_id,
                              {"study": study_id, "name": cfg.study.name[:200],
                               "content_hash": digest, "sites": sites[:100]})
        return digest

    def report(self) -> None:
        for report in self.store.unreported(self.preapproved):
            self.send(report)
            self.store.reported(report)

    def send(self, report: Report) -> None:
        r = self.link.request("POST", DECISIONS_PATH, json={
            "study_id": report.study_id, "content_hash": report.hash,
            "decision": report.decision.value, "reason": report.reason})
        if r.status_code >= 500:
            raise FedcareError(f"the hub answered {r.status_code} to {DECISIONS_PATH}")
        if r.status_code >= 400:  # e.g. a study the hub deleted: nothing to tell it
            log.warning("the hub declined the decision on study %s: %s", report.study_id,
                        r.text[:300])
        else:
            log.info("told the hub: study %s %s%s", report.study_id, report.decision.value,
                     f" ({report.reason})" if report.reason else "")
        self.audit.record(_AUDIT_KIND[report.decision], report.study_id,
                          {"study": report.study_id, "content_hash": report.hash,
                           "decision": report.decision.value, "by": report.who[:100],
                           "reason": None if report.reason is None else report.reason[:500]})
