"""The hub's durable state, shared by its parts: the state folder, the database, the blob
store, and the study event log."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from fedcare.hub.audit import AuditTrail
from fedcare.hub.store import BlobStore, Database, EventRepo

log = logging.getLogger("fedcare.hub")


@dataclass
class HubState:
    data_dir: Path
    db: Database
    blobs: BlobStore
    #: Write every site's reply to the blob store and keep it. Off by default: a reply
    #: is held in memory only, until its round is aggregated. A site's individual update
    #: is the most sensitive thing the hub handles, a study resumes from its checkpoints
    #: (never from the replies of a completed round), and writing them cost ~15 % of the
    #: hub's CPU in the network benchmark (4 MB per site per round for a 1 M-parameter
    #: model). A hub killed mid-round asks the round's sites again and each node sends
    #: the reply it already computed (NodeAgent). The trade-off: a site whose node also
    #: died before it could resend misses that round (left out at the deadline, like any
    #: silent site), where a stored reply would have counted. The reply rows are the
    #: record either way.
    keep_replies: bool = False
    #: The hub's signed audit trail (:mod:`fedcare.hub.audit`; the default records nothing).
    audit: AuditTrail = field(default_factory=lambda: AuditTrail(None))

    def event(self, kind: str, message: str, *, study_id: str | None = None,
              site: str | None = None) -> None:
        """Log an event and record it in the event log (``fedcare study logs``)."""
        log.info("%s: %s", kind, message)
        with self.db.session() as s:
            EventRepo(s).log(kind, message, study_id=study_id, site=site)
