"""A paused study (the hub could not write its storage) in the hub's store: its lifecycle,
resuming it (and a study an older hub failed on a full disk), the migration that allows the
status, and which errors count as the storage failing (audit finding F14)."""

from __future__ import annotations

import errno
import hashlib
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from fedcare.core.errors import ConfigError
from fedcare.core.messages import TaskKind
from fedcare.hub.store import (
    Database,
    InvalidTransition,
    NewTask,
    StudyRepo,
    StudyStatus,
    TaskRepo,
    TaskStatus,
    upgrade,
)
from fedcare.hub.store.database import create_hub_engine, downgrade
from fedcare.hub.store.faults import is_storage_failure_text, storage_problem
from tests.unit.helpers import insert_study_at_old_schema

SHA = hashlib.sha256(b"model").hexdigest()


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'hub.db'}")
    database.migrate()
    return database


def _running(db: Database, rounds: int = 3) -> str:
    with db.session() as s:
        study = StudyRepo(s).create("s", {}, SHA, ["a", "b"], rounds)
        StudyRepo(s).set_status(study.id, StudyStatus.RUNNING)
        return study.id


def _round_with_tasks(db: Database, study_id: str, round_: int) -> None:
    with db.session() as s:
        StudyRepo(s).start_round(study_id, round_)
        TaskRepo(s).create_many([NewTask(study_id, round_, x, TaskKind.FIT, SHA)
                                 for x in ("a", "b")])


def _statuses(db: Database, study_id: str, round_: int) -> set[TaskStatus]:
    with db.session() as s:
        return {t.status for t in TaskRepo(s).for_round(study_id, round_)}


def test_a_paused_study_keeps_its_open_tasks_and_resumes_running(db: Database) -> None:
    study_id = _running(db)
    _round_with_tasks(db, study_id, 1)

    with db.session() as s:
        StudyRepo(s).set_status(study_id, StudyStatus.PAUSED, error="disk full")
    assert not StudyStatus.PAUSED.terminal
    assert _statuses(db, study_id, 1) == {TaskStatus.PENDING}  # not expired: not over
    with db.session() as s:
        resumed = StudyRepo(s).resume(study_id)
    assert (resumed.status, resumed.error) == (StudyStatus.RUNNING, None)
    with pytest.raises(InvalidTransition, match="only a paused study"), db.session() as s:
        StudyRepo(s).resume(study_id)  # running already: a second resume is refused


def test_a_study_failed_on_a_full_disk_resumes_and_its_round_is_offered_again(
        db: Database) -> None:
    study_id = _running(db)
    _round_with_tasks(db, study_id, 1)
    with db.session() as s:  # what an older hub recorded (audit F14)
        StudyRepo(s).set_status(study_id, StudyStatus.FAILED, error="internal error: "
                                "OSError(28, 'No space left on device')")
    assert _statuses(db, study_id, 1) == {TaskStatus.EXPIRED}

    with db.session() as s:
        StudyRepo(s).resume(study_id)

    # The engine re-creates the same task ids: they must be deliverable again.
    assert _statuses(db, study_id, 1) == {TaskStatus.PENDING}
    with db.session() as s:
        assert TaskRepo(s).next_pending_for("a") is not None


@pytest.mark.parametrize("status,error", [
    (StudyStatus.FAILED, "round 2: only 1 of 3 sites answered"),
    (StudyStatus.FAILED, None),
    (StudyStatus.COMPLETED, None),
    (StudyStatus.CANCELLED, None),
])
def test_other_studies_cannot_be_resumed(db: Database, status: StudyStatus,
                                          error: str | None) -> None:
    study_id = _running(db)
    with db.session() as s:
        StudyRepo(s).set_status(study_id, status, error=error)
    with pytest.raises(InvalidTransition, match=f"is {status.value}"), db.session() as s:
        StudyRepo(s).resume(study_id)
    with db.session() as s:
        assert StudyRepo(s).get(study_id).status is status  # type: ignore[union-attr]


def test_a_paused_study_can_be_cancelled_or_failed_but_not_completed(db: Database) -> None:
    study_id = _running(db)
    with db.session() as s:
        StudyRepo(s).set_status(study_id, StudyStatus.PAUSED)
    with pytest.raises(InvalidTransition), db.session() as s:
        StudyRepo(s).set_status(study_id, StudyStatus.COMPLETED)
    with db.session() as s:
        StudyRepo(s).set_status(study_id, StudyStatus.CANCELLED)


def test_the_migration_keeps_every_round_and_task_and_downgrades_paused_to_failed(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0003")  # a hub database from before this status
    old = Database(url)
    study_id = insert_study_at_old_schema(old, ["a", "b"], 3, SHA, status="running")
    with old.engine.begin() as conn:  # round 1 started, as StudyRepo.start_round writes it
        conn.exec_driver_sql("INSERT INTO rounds (study_id, round, status, started_at) "
                             "VALUES (?, 1, 'running', '2026-01-01 00:00:00')", (study_id,))
    with old.session() as s:
        TaskRepo(s).create_many([NewTask(study_id, 1, x, TaskKind.FIT, SHA) for x in "ab"])
    old.dispose()

    upgrade(url)
    db = Database(url)
    try:
        # Rebuilding `studies` (alembic batch mode) would have emptied these two tables
        # through their ON DELETE CASCADE foreign keys.
        assert _statuses(db, study_id, 1) == {TaskStatus.PENDING}
        with db.session() as s:
            assert len(StudyRepo(s).rounds(study_id)) == 1
            StudyRepo(s).set_status(study_id, StudyStatus.PAUSED, error="disk full")
        with pytest.raises(sa.exc.IntegrityError), db.session() as s:  # still checked
            s.execute(sa.text("UPDATE studies SET status = 'bogus'"))
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    finally:
        db.dispose()

    engine = create_hub_engine(url)
    try:
        downgrade(engine, "0003")
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT status, error FROM studies").all() == [
                ("failed", "disk full")]
            assert conn.exec_driver_sql("SELECT count(*) FROM tasks").scalar() == 2
    finally:
        engine.dispose()


def test_real_sqlite_full_and_readonly_errors_are_storage_failures(tmp_path: Path) -> None:
    path = tmp_path / "tiny.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x BLOB)")
    with pytest.raises(sa.exc.OperationalError) as full, engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA max_page_count = 3")  # SQLite's own "disk is full"
        conn.exec_driver_sql("INSERT INTO t VALUES (zeroblob(100000))")
    engine.dispose()
    assert "disk is full" in (storage_problem(full.value) or "")

    ro = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as readonly:
        ro.execute("INSERT INTO t VALUES (1)")
    ro.close()
    assert "read-only" in (storage_problem(readonly.value) or "")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO])
def test_storage_oserrors_are_found_along_the_raise_from_chain(code: int) -> None:
    def checkpoint() -> None:
        try:
            raise OSError(code, "storage says no")
        except OSError as exc:
            raise RuntimeError("could not save the round") from exc

    with pytest.raises(RuntimeError) as caught:
        checkpoint()
    assert storage_problem(caught.value) is not None


@pytest.mark.parametrize("exc", [
    OSError(errno.ENOENT, "No such file or directory"),
    PermissionError(errno.EACCES, "Permission denied"),
    ValueError("bad"),
    ConfigError("lr must be finite"),
    sqlite3.OperationalError("no such table: studies"),
])
def test_other_errors_are_not(exc: Exception) -> None:
    assert storage_problem(exc) is None


def test_failures_recorded_as_text_by_older_hubs_are_recognised() -> None:
    assert is_storage_failure_text("internal error: OSError(28, 'No space left on device')")
    assert is_storage_failure_text("(sqlite3.OperationalError) database or disk is full")
    assert not is_storage_failure_text("round 2: secure aggregation aborted")
    assert not is_storage_failure_text(None)
