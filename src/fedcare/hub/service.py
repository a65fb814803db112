"""The hub service: studies, rounds and the node protocol, behind the HTTP API.

A thin facade over the hub's parts, each with one concern:

- :class:`~fedcare.hub.mailbox.TaskMailbox`: the tasks running engines offer, the sites'
  long-polls, and the replies the engines await;
- :class:`~fedcare.hub.intake.ReplyIntake`: a site's reply, checked, validated with what its
  engine expects, recorded and handed over;
- :class:`~fedcare.hub.studies.StudyDesk`: what researchers submit and read;
- :class:`~fedcare.hub.runner.StudyRunner`: the threads that run studies (each with the same
  :class:`RoundEngine` as simulation, over :class:`~fedcare.hub.transport.HubTransport`);
- :class:`~fedcare.hub.sites.SiteDirectory`: site hellos, certificate serials, revocation.

All state lives in the database and the blob store, so the hub can be killed at any moment
and, when restarted, every running study continues from its last completed round.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedcare.governance.approvals import Decision
from fedcare.hub.approvals import ApprovalDesk
from fedcare.hub.audit import AuditTrail
from fedcare.hub.errors import (
    Forbidden,
    NotAwaited,
    NotFound,
    NotResumable,
    StorageUnavailable,
    TooManyPolls,
)
from fedcare.hub.intake import ReplyIntake
from fedcare.hub.mailbox import MAX_POLLS_PER_SITE, Offer, TaskMailbox
from fedcare.hub.runner import StudyRunner
from fedcare.hub.sites import NeverRevoked, RevocationCheck, SiteDirectory
from fedcare.hub.state import HubState
from fedcare.hub.store import BlobStore, Database
from fedcare.hub.store.database import prepare_data_dir, writable_database
from fedcare.hub.studies import StudyDesk
from fedcare.hub.users import UserStore

__all__ = ["DEFAULT_MAX_BODY", "MAX_POLLS_PER_SITE", "Forbidden", "HubService", "NeverRevoked",
           "NotAwaited", "NotFound", "NotResumable", "Offer", "RevocationCheck",
           "StorageUnavailable", "TooManyPolls"]

#: Largest reply a node may post (bytes); configurable per hub.
DEFAULT_MAX_BODY = 2 * 1024**3


class HubService:
    """The hub's state and protocol.

    Args:
        data_dir: the state folder (database unless ``db_url``, blobs, study outputs); made
            owner-only, and refused with a :class:`HubStateError` when it cannot be written.
        revocation: whether a site certificate is revoked (required: see
            :class:`RevocationCheck`).
        keep_replies: write every accepted reply to the blob store (see
            :attr:`HubState.keep_replies`).
    """

    def __init__(self, data_dir: Path, *, revocation: RevocationCheck,
                 db_url: str | None = None,
                 max_body: int = DEFAULT_MAX_BODY, keep_replies: bool = False) -> None:
        data_dir = prepare_data_dir(data_dir)
        db = Database(db_url) if db_url else Database.for_data_dir(data_dir)
        with writable_database(db):
            db.migrate()
        self.state = HubState(data_dir, db, BlobStore(data_dir / "blobs"), keep_replies)
        self.state.audit = AuditTrail.for_data_dir(
            data_dir, on_error=lambda message: self.state.event("audit", message),
            background=True)
        self.max_body = max_body
        audit = self.state.audit
        self.users = UserStore(db, on_change=lambda kind, name, details: (
            audit.user_added if kind == "user_added" else audit.user_revoked)(name, details))
        self.directory = SiteDirectory(self.state, revocation)
        self.mailbox = TaskMailbox(db)
        self.intake = ReplyIntake(self.state, self.mailbox)
        self.approvals = ApprovalDesk(self.state, launch=lambda i: self.runner.launch(i),
                                      withdraw=self.mailbox.withdraw_site)
        self.runner = StudyRunner(self.state, self.mailbox, self.directory,
                                  withdrawn=self.approvals.withdrawn)
        self.studies = StudyDesk(self.state, self.mailbox, self.directory,
                                 approvals=self.approvals)

    @property
    def data_dir(self) -> Path:
        return self.state.data_dir

    @property
    def db(self) -> Database:
        return self.state.db

    @property
    def blobs(self) -> BlobStore:
        return self.state.blobs

    @property
    def keep_replies(self) -> bool:
        return self.state.keep_replies

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Resume every study that was running when the hub last stopped. A paused study
        waits for a researcher's ``fedcare study resume`` (its storage may still be full).
        A study waiting for its sites' approval starts when they have all approved."""
        self.runner.start()
        self.approvals.start()

    def stop(self) -> None:
        """Stop: wake every waiting long-poll (it answers "no task"), let studies resume on
        the next start."""
        self.approvals.stop()
        self.runner.stop()
        self.mailbox.stop()
        self.state.audit.flush()

    def is_revoked(self, serial_hex: str) -> bool:
        """Whether the certificate with this serial is revoked (see :class:`RevocationCheck`)."""
        return self.directory.is_revoked(serial_hex)

    def event(self, kind: str, message: str, *, study_id: str | None = None,
              site: str | None = None) -> None:
        self.state.event(kind, message, study_id=study_id, site=site)

    # -- researcher side ------------------------------------------------------------------
    def submit_study(self, raw: Mapping[str, Any], force: bool = False, *,
                     owner: str | None = None) -> dict[str, Any]:
        return self.studies.submit_study(raw, force, owner=owner)

    def study_status(self, study_id: str, last_rounds: int | None = None) -> dict[str, Any]:
        return self.studies.study_status(study_id, last_rounds)

    def list_studies(self) -> list[dict[str, Any]]:
        return self.studies.list_studies()

    def study_events(self, study_id: str, limit: int = 200) -> list[dict[str, Any]]:
        return self.studies.study_events(study_id, limit)

    def dataset_quality(self, name: str) -> dict[str, Any]:
        return self.studies.dataset_quality(name)

    def sites(self) -> list[dict[str, Any]]:
        return self.studies.sites()

    def resume_study(self, study_id: str) -> dict[str, Any]:
        return self.runner.resume_study(study_id)

    def wait_for(self, study_id: str, timeout: float | None = None) -> None:
        self.runner.wait_for(study_id, timeout)

    # -- node side ------------------------------------------------------------------------
    def hello(self, site: str, serial: str, version: str, datasets: list[dict[str, Any]],
              session: str) -> None:
        self.directory.hello(site, serial, version, datasets, session)

    async def next_task(self, site: str, wait: float) -> tuple[str, Offer] | None:
        """Long-poll (see :meth:`TaskMailbox.wait_for_task`); run it on the event loop."""
        return await self.mailbox.wait_for_task(site, wait)

    def study_for_node(self, site: str, study_id: str) -> dict[str, Any]:
        return self.studies.study_for_node(site, study_id)

    def pending_for(self, site: str) -> list[dict[str, Any]]:
        """The studies waiting for ``site``'s decision (see :class:`ApprovalDesk`)."""
        return self.approvals.pending_for(site)

    def site_decided(self, site: str, study_id: str, decision: Decision, content_hash: str,
                     reason: str | None) -> dict[str, Any]:
        """A site's node reports its steward's decision (or its own refusal) on a study."""
        return self.approvals.record(site, study_id, decision, content_hash, reason)

    def receive_reply(self, site: str, task_id: str, body: bytes, sha: str | None) -> None:
        """Validate and record a node's reply, then wake the round that waits for it
        (see :meth:`ReplyIntake.receive`)."""
        self.intake.receive(site, task_id, body, sha)

    def rejected(self, site: str, task_id: str, reason: str) -> None:
        """Log a refused reply in its study's event log (``fedcare study logs``)."""
        self.intake.rejected(site, task_id, reason)
