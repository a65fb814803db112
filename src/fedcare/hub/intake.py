"""A site's reply, from the HTTP body to the engine that waits for it: digest and ownership
checks, full validation with what the engine expects, the record in the store, and the hand
over (:meth:`TaskMailbox.resolve`)."""

from __future__ import annotations

import hashlib
from typing import NoReturn

from fedcare.core.errors import ProtocolError, ValidationError
from fedcare.core.messages import ErrorReply
from fedcare.core.wire import read_message
from fedcare.hub.errors import NotAwaited
from fedcare.hub.mailbox import TaskMailbox
from fedcare.hub.state import HubState
from fedcare.hub.store import (
    DuplicateReply,
    LateReply,
    ReplyRepo,
    TaskRepo,
    UnknownTask,
    WrongSite,
)
from fedcare.hub.store.models import OPEN_TASK_STATUSES
from fedcare.transport.base import Received


class ReplyIntake:
    def __init__(self, state: HubState, mailbox: TaskMailbox) -> None:
        self.state = state
        self.mailbox = mailbox

    def receive(self, site: str, task_id: str, body: bytes, sha: str | None) -> None:
        """Validate and record a node's reply, then wake the round that waits for it.

        Rejected (and logged) before anything is stored: a body whose sha256 does not match,
        a malformed message, an update with the wrong layout or NaN/Inf, a reply to a task this
        site never received, a duplicate, a late reply, a reply no running engine awaits.
        """
        try:
            digest = hashlib.sha256(body).hexdigest()
            if sha is None or digest != sha.lower():
                raise ValidationError("body does not match its X-Content-SHA256 header")
            message = read_message(body)  # the header, parsed once for every check below
            if message.header.get("task_id") != task_id:
                raise ValidationError("reply names another task than the one it is posted to")
            awaited = self.mailbox.awaited(task_id)
            # Refused here, before the body goes into the blob store (ReplyRepo.record would
            # refuse them too, but only after the store): otherwise a site could park any
            # bytes on the hub's disk by posting them to task ids that are not its own.
            if awaited is None:
                self._not_awaited(site, task_id)
            if awaited.site != site:
                raise WrongSite(f"task {task_id} was not sent to this site", site=site)
            decoded = awaited.expect.decode(message, site=site)  # full validation
            if self.state.keep_replies and not awaited.kind.is_protocol_step:
                # (A protocol step's reply is never reused: a restarted hub runs the round's
                # protocol again with fresh keys. So masked inputs, share ciphertexts and
                # decrypted sums are never written, whatever the hub keeps.)
                # Not fsynced (about 15 ms of disk wait per 4 MB reply, on the round's
                # critical path): a hub killed with kill -9 keeps it all the same, and a power
                # cut that loses it is found out on reading it back, when the site is asked
                # again (HubTransport._reuse). The round's checkpoint is fsynced.
                self.state.blobs.put_hashed(body, digest, durable=False)
            error = decoded if isinstance(decoded, ErrorReply) else None
            with self.state.db.session() as s:
                ReplyRepo(s).record(task_id, site, digest, len(body), is_error=error is not None,
                                    message=None if error is None else error.message)
            self.state.audit.update_received(task_id, site, digest, len(body),
                                             error=error is not None)
        except (ValidationError, ProtocolError) as exc:
            self.rejected(site, task_id, exc.message)
            raise
        # Withdrawn meanwhile (its round ended): recorded, and not counted.
        self.mailbox.resolve(task_id, Received(decoded, len(body)))

    def _not_awaited(self, site: str, task_id: str) -> NoReturn:
        """Why a reply to a task no engine awaits is refused, as precisely as the store can
        tell: no such task, another site's, answered already, closed, else not awaited (a
        restarted hub whose engine has not asked for it again yet: its node sends the same
        reply when it does)."""
        with self.state.db.session() as s:
            task = TaskRepo(s).get(task_id)
            if task is None:
                raise UnknownTask(f"no task {task_id!r}", site=site)
            if task.site != site:
                raise WrongSite(f"task {task_id} was not sent to this site", site=site)
            if ReplyRepo(s).get(task_id) is not None:
                raise DuplicateReply(f"task {task_id} was already answered", site=site)
            if task.status not in OPEN_TASK_STATUSES:
                raise LateReply(f"task {task_id} is closed ({task.status.value}) or its round "
                                "is over", site=site)
        raise NotAwaited(f"task {task_id} is not awaited by a running study on this hub; "
                         "its site is asked again if it still is", site=site)

    def rejected(self, site: str, task_id: str, reason: str) -> None:
        """Log a refused reply in its study's event log (``fedcare study logs``)."""
        self.state.event("rejected", f"reply to {task_id} from {site} rejected: {reason}",
                         site=site, study_id=_study_of(task_id))


def _study_of(task_id: str) -> str | None:
    """The study id a (site-supplied, unchecked) task id names, for the event log; None when
    it cannot be one. The prefix used to be logged as is: on PostgreSQL one longer than the
    events.study_id column (64) made logging the rejection fail and the API answer 500."""
    study_id = task_id.split("/", 1)[0]
    return study_id if 0 < len(study_id) <= 64 else None
