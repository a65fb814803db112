"""The hub's model registry table (migration 0007): entries are added and read, never changed
- the store refuses an UPDATE or DELETE (database triggers) and the repository has no method
for either. Run on SQLite here, on PostgreSQL in tests/integration/test_hub_model_registry_pg.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from fedcare.hub.store import Database, upgrade
from fedcare.hub.store.database import create_hub_engine, downgrade
from fedcare.hub.store.models import ModelEntry, Study, utcnow
from fedcare.hub.store.registry import EntryExists, ModelRegistryRepo


def entry(entry_id: str = "a" * 20, study_id: str = "s1") -> dict[str, Any]:
    return {"id": entry_id, "study_id": study_id, "study_hash": "f" * 64,
            "created": "2026-12-04T19:00:00+00:00", "study": "x"}


class RegistryStoreContract:
    @pytest.fixture
    def db_url(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    def db(self, db_url: str) -> Iterator[Database]:
        database = Database(db_url)
        database.migrate()
        yield database
        database.dispose()

    def test_an_entry_is_added_and_read_back(self, db: Database) -> None:
        with db.session() as s:
            ModelRegistryRepo(s).add(entry())
            ModelRegistryRepo(s).add(entry("b" * 20))
        with db.session() as s:
            got = ModelRegistryRepo(s).get("a" * 20)
            assert got is not None and got.entry["study"] == "x"
            assert [r.id for r in ModelRegistryRepo(s).list("s1")] == ["a" * 20, "b" * 20]

    def test_the_same_id_twice_is_refused(self, db: Database) -> None:
        with db.session() as s:
            ModelRegistryRepo(s).add(entry())
        with pytest.raises(EntryExists), db.session() as s:
            ModelRegistryRepo(s).add(entry())

    def test_the_database_refuses_update_and_delete(self, db: Database) -> None:
        with db.session() as s:
            ModelRegistryRepo(s).add(entry())
        for stmt in (sa.update(ModelEntry).values(study_hash="0" * 64),
                     sa.delete(ModelEntry)):
            with pytest.raises(sa.exc.DBAPIError, match="immutable"), db.session() as s:
                s.execute(stmt)
        with db.session() as s:
            row = ModelRegistryRepo(s).get("a" * 20)
            assert row is not None and row.study_hash == "f" * 64

    def test_an_orm_change_is_refused_too(self, db: Database) -> None:
        with db.session() as s:
            ModelRegistryRepo(s).add(entry())
        with pytest.raises(sa.exc.DBAPIError, match="immutable"), db.session() as s:
            row = ModelRegistryRepo(s).get("a" * 20)
            assert row is not None
            row.entry = {**row.entry, "study": "renamed"}


    def test_migration_0007_keeps_the_studies_and_downgrades_cleanly(self, db_url: str
                                                                     ) -> None:
        upgrade(db_url, "0006")
        old = Database(db_url)
        with old.session() as s:  # the 0006 columns only (the ORM's model is the head's)
            now = utcnow()
            s.execute(sa.insert(Study.__table__).values(
                id="s1", name="s", config={}, config_hash="f" * 64, status="pending",
                rounds_planned=1, current_round=0, created_at=now, updated_at=now,
                sites=["a"]))
        old.dispose()
        upgrade(db_url)
        engine = create_hub_engine(db_url)
        try:
            assert "model_registry" in sa.inspect(engine).get_table_names()
            downgrade(engine, "0006")
            assert "model_registry" not in sa.inspect(engine).get_table_names()
            with engine.connect() as conn:
                assert conn.exec_driver_sql("SELECT count(*) FROM studies").scalar() == 1
        finally:
            engine.dispose()
        upgrade(db_url)  # and up again (the trigger and its function are made anew)
        db = Database(db_url)
        try:
            with db.session() as s:
                ModelRegistryRepo(s).add(entry())
            with pytest.raises(sa.exc.DBAPIError, match="immutable"), db.session() as s:
                s.execute(sa.delete(ModelEntry))
        finally:
            db.dispose()


def test_the_repository_has_no_write_but_add() -> None:
    public = {n for n in dir(ModelRegistryRepo) if not n.startswith("_")}
    assert public == {"add", "get", "list"}


class TestSqliteRegistry(RegistryStoreContract):
    @pytest.fixture
    def db_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'hub.db'}"
