"""Tasks: the queue each site long-polls.

A task's id is deterministic (``study/r{round}/{kind}/{site}``), so an engine that restarts
after a crash and re-issues a round creates no duplicates: :meth:`TaskRepo.create_many` is an
``INSERT … ON CONFLICT DO NOTHING`` and returns the rows as stored (a row keeps the digest
of the first payload it was created with).

Delivery is at-least-once: :meth:`TaskRepo.next_pending_for` marks a task delivered and counts
the attempt in the same transaction that reads it. If that transaction commits but the HTTP
answer is lost, the task is handed out again once its lease (``redeliver_after``) runs out.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from fedcare.core.errors import ValidationError
from fedcare.core.messages import TaskKind
from fedcare.core.messages import task_id as _task_id
from fedcare.hub.store._sql import insert_for
from fedcare.hub.store.blobs import check_blob_id
from fedcare.hub.store.errors import StoreError
from fedcare.hub.store.models import OPEN_TASK_STATUSES, Task, TaskStatus, utcnow
from fedcare.hub.store.studies import expire_open_tasks


def task_id(study_id: str, round: int, kind: TaskKind, site: str, attempt: int = 1) -> str:
    """The deterministic id of a task: ``study/r{round}/{kind}/{site}`` (a secure round's
    later protocol attempt: ``study/r{round}/a{attempt}/{kind}/{site}``)."""
    return _task_id(study_id, round, kind, site, attempt)


@dataclass(frozen=True)
class NewTask:
    """What the engine asks to send: one payload blob to one site for one round."""

    study_id: str
    round: int
    site: str
    kind: TaskKind
    payload_sha: str
    #: A secure round's protocol attempt (a restarted hub runs the round's protocol again).
    attempt: int = 1

    def __post_init__(self) -> None:
        check_blob_id(self.payload_sha)
        if self.round < 1:
            raise ValidationError(f"task round must be >= 1 (rounds count from 1), "
                                  f"got {self.round}")
        if not self.site or "/" in self.site:
            raise ValidationError(f"invalid site name {self.site!r}")

    @property
    def id(self) -> str:
        return task_id(self.study_id, self.round, self.kind, self.site, self.attempt)


class TaskRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def create_many(self, tasks: Iterable[NewTask]) -> list[Task]:
        """Create the tasks that do not exist yet; return every requested row, in order."""
        wanted = list(tasks)
        if not wanted:
            return []
        now = utcnow()
        rows = [
            {"id": t.id, "study_id": t.study_id, "round": t.round, "site": t.site,
             "kind": t.kind, "payload_sha": t.payload_sha, "status": TaskStatus.PENDING,
             "created_at": now, "attempts": 0}
            for t in wanted
        ]
        stmt = insert_for(self.session, Task).values(rows).on_conflict_do_nothing(
            index_elements=[Task.id]
        )
        self.session.execute(stmt)
        ids = [t.id for t in wanted]
        found = {
            row.id: row
            for row in self.session.scalars(
                sa.select(Task).where(Task.id.in_(ids)).execution_options(populate_existing=True)
            )
        }
        return [found[i] for i in ids]

    def get(self, task_id: str) -> Task | None:
        return self.session.get(Task, task_id)

    def next_pending_for(
        self, site: str, *, redeliver_after: timedelta | None = None,
        among: Collection[str] | None = None,
    ) -> Task | None:
        """Hand the site its oldest pending task: mark it delivered and count the attempt.

        ``redeliver_after`` also hands out a task delivered longer ago than that and still
        unanswered (its answer was presumably lost). ``among`` limits the choice to these task
        ids (the hub hands out only tasks a running engine offers). Two concurrent callers
        never get the same task: PostgreSQL skips rows another transaction has locked
        (``FOR UPDATE SKIP LOCKED``); on SQLite the transaction holds the write lock.
        """
        now = utcnow()
        ready = Task.status == TaskStatus.PENDING
        if redeliver_after is not None:
            ready = sa.or_(
                ready,
                sa.and_(Task.status == TaskStatus.DELIVERED,
                        Task.delivered_at < now - redeliver_after),
            )
        if among is not None:
            ready = sa.and_(ready, Task.id.in_(list(among)))
        task = self.session.scalars(
            sa.select(Task)
            .where(Task.site == site, ready)
            .order_by(Task.created_at, Task.id)
            .limit(1)
            .with_for_update(skip_locked=True)
            .execution_options(populate_existing=True)
        ).one_or_none()
        if task is None:
            return None
        task.status = TaskStatus.DELIVERED
        task.delivered_at = now
        task.attempts += 1
        self.session.flush()
        return task

    def mark_done(self, task_id: str) -> Task:
        return self._finish(task_id, TaskStatus.DONE)

    def mark_failed(self, task_id: str) -> Task:
        return self._finish(task_id, TaskStatus.FAILED)

    def expire_round(self, study_id: str, round: int) -> int:
        """Expire the round's unanswered tasks (deadline passed); return how many."""
        return expire_open_tasks(self.session, study_id, round)

    def for_round(self, study_id: str, round: int) -> list[Task]:
        return list(
            self.session.scalars(
                sa.select(Task)
                .where(Task.study_id == study_id, Task.round == round)
                .order_by(Task.site, Task.kind)
            )
        )

    def _finish(self, task_id: str, status: TaskStatus) -> Task:
        task = self.session.scalars(
            sa.select(Task)
            .where(Task.id == task_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).one_or_none()
        if task is None:
            raise StoreError(f"no task {task_id!r}")
        if task.status == status:
            return task
        if task.status not in OPEN_TASK_STATUSES:
            raise StoreError(f"task {task_id} is already {task.status.value}")
        task.status = status
        task.completed_at = utcnow()
        self.session.flush()
        return task
