"""Migration 0010 (site decisions, the approval statuses) on SQLite: the studies' status
CHECK constraint is widened in place (no row of a referencing table is lost), a decision
is kept per (study, site), and a downgrade leaves representable statuses only."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from fedcare.governance.approvals import Decision
from fedcare.hub.store import (
    Database,
    DecisionRepo,
    InvalidTransition,
    StudyRepo,
    StudyStatus,
    upgrade,
)
from fedcare.hub.store.database import create_hub_engine, downgrade


def test_migration_0010_keeps_the_rounds_and_downgrades_cleanly(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    upgrade(url, "0009")  # the revision before 0010
    old = Database(url)
    with old.session() as s:
        StudyRepo(s).create("old", {}, "f" * 64, ["a"], 2, study_id="old")
        StudyRepo(s).set_status("old", StudyStatus.RUNNING)
        StudyRepo(s).start_round("old", 1)
    old.dispose()
    upgrade(url)
    db = Database(url)
    try:
        with db.session() as s:
            assert len(StudyRepo(s).rounds("old")) == 1  # not cascaded away
            StudyRepo(s).create("new", {}, "e" * 64, ["a", "b"], 2, study_id="new")
            StudyRepo(s).set_status("new", StudyStatus.PENDING_APPROVAL)
            DecisionRepo(s).record("new", "a", Decision.APPROVED, "e" * 64, None)
            DecisionRepo(s).record("new", "a", Decision.REVOKED, "e" * 64, "consent")
        with db.session() as s:
            got = DecisionRepo(s).for_study("new")
            assert {k: v[:2] for k, v in got.items()} == {"a": (Decision.REVOKED, "consent")}
            with pytest.raises(InvalidTransition):  # waiting for approval: no round yet
                StudyRepo(s).set_status("new", StudyStatus.PAUSED)
            StudyRepo(s).set_status("new", StudyStatus.REJECTED, error="site a revoked")
        with pytest.raises(InvalidTransition), db.session() as s:  # rejected is final
            StudyRepo(s).set_status("new", StudyStatus.RUNNING)
    finally:
        db.dispose()

    engine = create_hub_engine(url)
    try:
        downgrade(engine, "0009")
        assert "site_decisions" not in sa.inspect(engine).get_table_names()
        with engine.connect() as conn:
            rows = dict(conn.exec_driver_sql("SELECT id, status FROM studies").fetchall())
            assert rows == {"old": "running", "new": "failed"}
            assert conn.exec_driver_sql("SELECT count(*) FROM rounds").scalar() == 1
    finally:
        engine.dispose()
    upgrade(url)  # and up again
