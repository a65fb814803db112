"""The hub store's contract suite on PostgreSQL, plus what only PostgreSQL does (row locks)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from fedcare.core.messages import TaskKind
from fedcare.hub.store import Database, NewTask, StudyRepo, StudyStatus, TaskRepo
from tests.integration.pg import PgServer
from tests.unit.test_hub_store import StoreContract

SHA = hashlib.sha256(b"payload").hexdigest()


class TestPostgresStore(StoreContract):
    @pytest.fixture
    def db_url(self, pg_server: PgServer) -> Iterator[str]:
        url = pg_server.create_database()
        yield url
        pg_server.drop_database(url)

    def test_plain_postgresql_url_uses_psycopg(self, db_url: str) -> None:
        db = Database(db_url.replace("postgresql+psycopg://", "postgresql://"))
        try:
            assert (db.dialect, db.url.drivername) == ("postgresql", "postgresql+psycopg")
        finally:
            db.dispose()

    def test_a_locked_task_is_skipped_not_waited_for(self, db: Database) -> None:
        with db.session() as s:
            study = StudyRepo(s).create("s", {}, SHA, ["a"], 2)
            StudyRepo(s).set_status(study.id, StudyStatus.RUNNING)
            TaskRepo(s).create_many([NewTask(study.id, r, "a", TaskKind.FIT, SHA) for r in (1, 2)])

        with db.session() as first:
            held = TaskRepo(first).next_pending_for("a")
            with db.session() as second:  # runs while `first` holds its row lock
                second.execute(sa.text("SET LOCAL lock_timeout = '2s'"))
                other = TaskRepo(second).next_pending_for("a")
                nothing = TaskRepo(second).next_pending_for("a")

        assert held is not None and other is not None
        assert held.id != other.id
        assert nothing is None
