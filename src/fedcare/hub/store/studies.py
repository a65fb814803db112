"""Studies and their rounds: the lifecycle, and the one atomic step that completes a round.

Lifecycle (fail-closed: anything not listed is refused)::

    pending ──► pending_approval ──► rejected / expired / cancelled / failed
       │              │ (every site approved)
       ▼              │
    running ◄─────────┘
       ├──► completed / failed / cancelled
       └──► paused ──► running (resume) / cancelled / failed

``paused``: the hub could not write its storage (disk full, read-only, I/O error); the study
is not over and keeps its open tasks. :meth:`StudyRepo.resume` sets it running again, and
also a study an older hub marked ``failed`` for such an error (its checkpoints are intact).

Resuming after a crash relies on one invariant: ``studies.current_round`` (the last completed
round), ``studies.global_model`` / ``strategy_state`` and the ``rounds`` row of that round are
changed together by :meth:`StudyRepo.complete_round` in the caller's single transaction. After
a ``kill -9`` a round is either fully recorded or not at all, and the engine redoes it.
"""

from __future__ import annotations

import builtins
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from fedcare.core.errors import ValidationError
from fedcare.hub.store.blobs import check_blob_id
from fedcare.hub.store.errors import InvalidTransition, RoundConflict, StudyNotFound
from fedcare.hub.store.faults import is_storage_failure_text
from fedcare.hub.store.models import (
    OPEN_TASK_STATUSES,
    Round,
    RoundStatus,
    Study,
    StudyStatus,
    Task,
    TaskStatus,
    utcnow,
)

_ALLOWED: dict[StudyStatus, frozenset[StudyStatus]] = {
    StudyStatus.PENDING: frozenset(
        {StudyStatus.RUNNING, StudyStatus.PENDING_APPROVAL, StudyStatus.CANCELLED,
         StudyStatus.FAILED}
    ),
    StudyStatus.PENDING_APPROVAL: frozenset(
        {StudyStatus.RUNNING, StudyStatus.REJECTED, StudyStatus.EXPIRED,
         StudyStatus.CANCELLED, StudyStatus.FAILED}
    ),
    StudyStatus.RUNNING: frozenset(
        {StudyStatus.COMPLETED, StudyStatus.FAILED, StudyStatus.CANCELLED, StudyStatus.PAUSED}
    ),
    StudyStatus.PAUSED: frozenset(
        {StudyStatus.RUNNING, StudyStatus.FAILED, StudyStatus.CANCELLED}
    ),
    StudyStatus.COMPLETED: frozenset(),
    StudyStatus.FAILED: frozenset(),
    StudyStatus.CANCELLED: frozenset(),
    StudyStatus.REJECTED: frozenset(),
    StudyStatus.EXPIRED: frozenset(),
}
_STUDY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def new_study_id() -> str:
    """A short random id (12 hex digits of a uuid4)."""
    return uuid.uuid4().hex[:12]


def expire_open_tasks(session: Session, study_id: str, round: int | None = None) -> int:
    """Mark the study's (or one round's) pending and delivered tasks expired; return how many."""
    stmt = (
        sa.update(Task)
        .where(Task.study_id == study_id, Task.status.in_(OPEN_TASK_STATUSES))
        .values(status=TaskStatus.EXPIRED, completed_at=utcnow())
        .execution_options(synchronize_session="fetch")
    )
    if round is not None:
        stmt = stmt.where(Task.round == round)
    return session.execute(stmt).rowcount  # type: ignore[attr-defined, no-any-return]


class StudyRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def create(
        self,
        name: str,
        config: Mapping[str, Any],
        config_hash: str,
        sites: Sequence[str],
        rounds_planned: int,
        *,
        study_id: str | None = None,
        owner: str | None = None,
    ) -> Study:
        """A new study in status ``pending``. ``config_hash`` is the governance content hash of
        ``config`` (computed by the caller: the store does not define what is hashed)."""
        study_id = study_id or new_study_id()
        if not _STUDY_ID.fullmatch(study_id):
            raise ValidationError(f"invalid study id {study_id!r}")
        check_blob_id(config_hash)
        if rounds_planned < 0:
            raise ValidationError("rounds_planned must be >= 0")
        now = utcnow()
        study = Study(
            id=study_id, name=name, config=dict(config), config_hash=config_hash,
            status=StudyStatus.PENDING, rounds_planned=rounds_planned, current_round=0,
            created_at=now, updated_at=now, sites=list(sites),
        )
        if owner is not None:  # unset: the INSERT names no owner (schemas before 0008 too)
            study.owner = owner
        self.session.add(study)
        self.session.flush()
        return study

    def get(self, study_id: str) -> Study | None:
        return self.session.get(Study, study_id)

    def list(self, *, status: StudyStatus | None = None) -> list[Study]:
        query = sa.select(Study).order_by(Study.created_at, Study.id)
        if status is not None:
            query = query.where(Study.status == status)
        return list(self.session.scalars(query))

    def set_status(
        self, study_id: str, status: StudyStatus, *, error: str | None = None
    ) -> Study:
        """Move a study along its lifecycle; a terminal status expires its open tasks.

        Setting the status it already has is a no-op; any other move not in the lifecycle
        raises :class:`InvalidTransition`.
        """
        study = self._locked(study_id)
        if status == study.status:
            return study
        if status not in _ALLOWED[study.status]:
            raise InvalidTransition(
                f"study {study_id}: cannot go from {study.status.value} to {status.value}"
            )
        study.status = status
        if error is not None:
            study.error = error
        study.updated_at = utcnow()
        if status.terminal:
            expire_open_tasks(self.session, study_id)
        self.session.flush()
        return study

    def resume(self, study_id: str) -> Study:
        """Set a paused study running again, or a failed one whose recorded failure was a
        storage failure (an older hub failed such studies; their checkpoints are intact).

        The study continues after its last completed round: the tasks of later rounds that a
        terminal status had expired are reopened (the engine re-creates the same task ids,
        which would otherwise never be handed out again), and the error is cleared (the
        event log keeps it). Anything else raises :class:`InvalidTransition`.
        """
        study = self._locked(study_id)
        resumable = study.status == StudyStatus.PAUSED or (
            study.status == StudyStatus.FAILED and is_storage_failure_text(study.error))
        if not resumable:
            why = f" ({study.error})" if study.error else ""
            raise InvalidTransition(
                f"study {study_id} is {study.status.value}{why}: only a paused study, or one "
                "that failed because the hub could not write its storage, can be resumed"
            )
        self.session.execute(
            sa.update(Task)
            .where(Task.study_id == study_id, Task.round > study.current_round,
                   Task.status == TaskStatus.EXPIRED)
            .values(status=TaskStatus.PENDING, delivered_at=None, completed_at=None)
            .execution_options(synchronize_session="fetch")
        )
        study.status, study.error, study.updated_at = StudyStatus.RUNNING, None, utcnow()
        self.session.flush()
        return study

    def start_round(self, study_id: str, round: int) -> Round:
        """Record that ``round`` (the study's next one) started; idempotent while it runs."""
        study = self._locked(study_id)
        if round != study.current_round + 1 or round > study.rounds_planned:
            raise RoundConflict(
                f"study {study_id}: cannot start round {round} "
                f"(last completed {study.current_round} of {study.rounds_planned})"
            )
        row = self.session.get(Round, (study_id, round), populate_existing=True)
        if row is None:
            row = Round(study_id=study_id, round=round, status=RoundStatus.RUNNING,
                        started_at=utcnow())
            self.session.add(row)
        elif row.status == RoundStatus.FAILED:  # a retry of a failed round
            row.status, row.started_at, row.completed_at = RoundStatus.RUNNING, utcnow(), None
        self.session.flush()
        return row

    def fail_round(
        self, study_id: str, round: int, record: Mapping[str, Any] | None = None
    ) -> Round:
        """Mark a started round failed and expire its open tasks (the study status is left to
        the caller: a failed round may be retried)."""
        self._locked(study_id)
        row = self.session.get(Round, (study_id, round), populate_existing=True)
        if row is None or row.status != RoundStatus.RUNNING:
            raise RoundConflict(f"study {study_id}: round {round} is not running")
        row.status, row.completed_at = RoundStatus.FAILED, utcnow()
        if record is not None:
            row.record = dict(record)
        expire_open_tasks(self.session, study_id, round)
        self.session.flush()
        return row

    def complete_round(
        self,
        study_id: str,
        round: int,
        record: Mapping[str, Any],
        model_sha: str,
        strategy_state_sha: str | None,
    ) -> Study:
        """Atomically record round ``round`` as completed (in the caller's transaction):
        the ``rounds`` row (status, record, model), the study's ``current_round``,
        ``global_model`` and ``strategy_state``, and the expiry of the round's unanswered
        tasks. ``round`` must be the study's next round; completing it twice raises
        :class:`RoundConflict`. The blobs must already be stored. The study's status is not
        changed, even after its last round: the engine decides when it is ``completed``.
        """
        check_blob_id(model_sha)
        if strategy_state_sha is not None:
            check_blob_id(strategy_state_sha)
        study = self._locked(study_id)
        if study.status != StudyStatus.RUNNING:
            raise RoundConflict(f"study {study_id} is {study.status.value}, not running")
        if round != study.current_round + 1 or round > study.rounds_planned:
            raise RoundConflict(
                f"study {study_id}: cannot complete round {round} "
                f"(last completed {study.current_round} of {study.rounds_planned})"
            )
        now = utcnow()
        self._write_round(study_id, round, dict(record), model_sha, now)
        expire_open_tasks(self.session, study_id, round)
        study.current_round = round
        study.global_model = model_sha
        study.strategy_state = strategy_state_sha
        study.updated_at = now
        self.session.flush()
        return study

    def rounds(self, study_id: str, last: int | None = None) -> builtins.list[Round]:
        """The study's rounds in order; with ``last``, only the last that many."""
        query = sa.select(Round).where(Round.study_id == study_id)
        if last is None:
            return list(self.session.scalars(query.order_by(Round.round)))
        return list(reversed(self.session.scalars(
            query.order_by(Round.round.desc()).limit(last)).all()))

    def update_record(self, study_id: str, round: int, record: Mapping[str, Any]) -> None:
        """A completed round's record, completed later: the model a round produced is
        evaluated with the next round's tasks (or the final evaluation), after the round's
        row was written. Nothing else of the row changes; an unknown round is ignored."""
        row = self.session.get(Round, (study_id, round), populate_existing=True)
        if row is not None and row.status == RoundStatus.COMPLETED:
            row.record = dict(record)
            self.session.flush()

    def _write_round(
        self, study_id: str, round: int, record: dict[str, Any], model_sha: str, now: Any
    ) -> None:
        row = self.session.get(Round, (study_id, round), populate_existing=True)
        if row is None:
            row = Round(study_id=study_id, round=round, started_at=now)
            self.session.add(row)
        row.status, row.completed_at = RoundStatus.COMPLETED, now
        row.record, row.model_sha = record, model_sha
        self.session.flush()

    def _locked(self, study_id: str) -> Study:
        """The study row, locked for update until the transaction ends (no-op on SQLite,
        whose transactions already hold the database's write lock)."""
        study = self.session.scalars(
            sa.select(Study)
            .where(Study.id == study_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).one_or_none()
        if study is None:
            raise StudyNotFound(f"no study {study_id!r}")
        return study
