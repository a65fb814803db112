"""Sites' replies to tasks, accepted at most once and only while they can still count.

:meth:`ReplyRepo.record` is the hub's gate for submissions. In one transaction it locks the
study row (shared) and the task row, so a reply can neither race a second reply to the same
task nor slip in after :meth:`~fedcare.hub.store.studies.StudyRepo.complete_round` committed.
The reply also closes its task (``done``, or ``failed`` for an error reply).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from fedcare.hub.store.blobs import check_blob_id
from fedcare.hub.store.errors import (
    DuplicateReply,
    LateReply,
    NotDelivered,
    UnknownTask,
    WrongSite,
)
from fedcare.hub.store.models import (
    OPEN_TASK_STATUSES,
    Reply,
    Round,
    RoundStatus,
    Study,
    Task,
    TaskStatus,
    utcnow,
)


class ReplyRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def record(
        self,
        task_id: str,
        site: str,
        blob_sha: str | None,
        size: int,
        is_error: bool = False,
        message: str | None = None,
    ) -> Reply:
        """Accept ``site``'s reply to ``task_id`` or raise, writing nothing:

        :class:`UnknownTask` (no such task), :class:`WrongSite` (not sent to this site),
        :class:`DuplicateReply` (already answered), :class:`LateReply` (task expired, or its
        round completed or failed), :class:`NotDelivered` (never handed out).
        """
        if blob_sha is not None:
            check_blob_id(blob_sha)
        task = self.session.get(Task, task_id)
        if task is None:
            raise UnknownTask(f"no task {task_id!r}", site=site)
        if task.site != site:
            raise WrongSite(f"task {task_id} was not sent to this site", site=site)
        study = self.session.scalars(
            sa.select(Study).where(Study.id == task.study_id)
            .with_for_update(read=True).execution_options(populate_existing=True)
        ).one()
        task = self.session.scalars(
            sa.select(Task).where(Task.id == task_id)
            .with_for_update().execution_options(populate_existing=True)
        ).one()
        if self.session.get(Reply, task_id) is not None:
            raise DuplicateReply(f"task {task_id} was already answered", site=site)
        if task.status not in OPEN_TASK_STATUSES or self._round_closed(study, task.round):
            raise LateReply(f"task {task_id} is closed ({task.status.value}) or its round "
                            "is over", site=site)
        if task.status != TaskStatus.DELIVERED:
            raise NotDelivered(f"task {task_id} was never delivered", site=site)
        now = utcnow()
        reply = Reply(task_id=task_id, site=site, blob_sha=blob_sha, size=size,
                      received_at=now, is_error=is_error, error_message=message)
        self.session.add(reply)
        task.status = TaskStatus.FAILED if is_error else TaskStatus.DONE
        task.completed_at = now
        self.session.flush()
        return reply

    def get(self, task_id: str) -> Reply | None:
        return self.session.get(Reply, task_id)

    def forget(self, task_id: str) -> None:
        """Drop a reply whose bytes the hub no longer has and reopen its task, so that the
        site is asked again instead of the reply being counted from bytes nobody has: the
        previous hub process held them in memory only (the default), or a power cut lost them
        before the kernel wrote them (replies are not fsynced)."""
        reply = self.session.get(Reply, task_id)
        task = self.session.get(Task, task_id)
        if reply is not None:
            self.session.delete(reply)
        if task is not None:
            task.status = TaskStatus.PENDING
            task.completed_at = None
        self.session.flush()

    def answered(self, task_ids: list[str]) -> dict[str, str]:
        """The sha256 of the reply to each of these tasks that has one (task id -> sha256);
        the blob store holds its bytes only when the hub keeps replies."""
        if not task_ids:
            return {}
        rows = self.session.execute(
            sa.select(Reply.task_id, Reply.blob_sha).where(Reply.task_id.in_(task_ids)))
        return {tid: sha for tid, sha in rows if sha is not None}

    def get_for_round(self, study_id: str, round: int) -> list[Reply]:
        """Every reply to a task of this round, by site."""
        return list(
            self.session.scalars(
                sa.select(Reply)
                .join(Task, Task.id == Reply.task_id)
                .where(Task.study_id == study_id, Task.round == round)
                .order_by(Reply.site, Reply.task_id)
            )
        )

    def _round_closed(self, study: Study, round: int) -> bool:
        # Round 0 (the feature statistics) closes when round 1 completes.
        if round <= study.current_round and (round > 0 or study.current_round > 0):
            return True
        row = self.session.get(Round, (study.id, round), populate_existing=True)
        return row is not None and row.status != RoundStatus.RUNNING
