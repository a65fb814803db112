"""The hub's persistence layer: blob store, and a contract suite every database backend passes.

:class:`StoreContract` holds the backend-independent tests; ``TestSqliteStore`` runs them on a
SQLite file here and ``tests/integration/test_hub_store_pg.py`` runs them on PostgreSQL.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import threading
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from fedcare.core.errors import FedcareError, ProtocolError
from fedcare.core.messages import TaskKind
from fedcare.hub.store import (
    BlobCorrupted,
    BlobNotFound,
    BlobStore,
    Database,
    DatasetInfo,
    DuplicateReply,
    EventRepo,
    InvalidBlobId,
    InvalidTransition,
    LateReply,
    NewTask,
    NotDelivered,
    ReplyRepo,
    Round,
    RoundConflict,
    RoundStatus,
    SiteRepo,
    Study,
    StudyRepo,
    StudyStatus,
    Task,
    TaskRepo,
    TaskStatus,
    UnknownTask,
    WrongSite,
    task_id,
    upgrade,
)
from fedcare.hub.store import studies as studies_module
from fedcare.hub.store.ledger_heads import HeadRecord, LedgerHeadRepo
from fedcare.hub.store.models import Base

TABLES = {"sites", "studies", "rounds", "tasks", "replies", "events", "ledger_heads",
          "model_registry", "users", "export_requests", "export_decisions",
          "site_decisions"}
SHA_A = hashlib.sha256(b"model-a").hexdigest()
SHA_B = hashlib.sha256(b"model-b").hexdigest()
SHA_STATE = hashlib.sha256(b"strategy-state").hexdigest()
CONFIG_HASH = hashlib.sha256(b"config").hexdigest()
MB = 1 << 20


# --------------------------------------------------------------------------- blob store


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def test_blob_round_trip_is_content_addressed(blobs: BlobStore) -> None:
    sha = blobs.put(b"weights")

    assert sha == hashlib.sha256(b"weights").hexdigest()
    assert blobs.get(sha) == b"weights"
    assert blobs.exists(sha)
    assert blobs.path(sha) == blobs.root / sha[:2] / sha[2:]
    with blobs.open(sha) as f:
        assert f.read() == b"weights"


def test_blob_put_is_idempotent(blobs: BlobStore) -> None:
    first = blobs.put(b"same bytes")
    second = blobs.put(b"same bytes")

    assert first == second
    assert [p.name for p in (blobs.root / first[:2]).iterdir()] == [first[2:]]
    assert list((blobs.root / "tmp").iterdir()) == []


def test_blob_corruption_is_detected_and_repaired_by_a_new_put(blobs: BlobStore) -> None:
    sha = blobs.put(b"x" * 1000)
    path = blobs.path(sha)
    path.chmod(0o644)
    path.write_bytes(b"y" * 1000)  # same size, different bytes

    with pytest.raises(BlobCorrupted):
        blobs.get(sha)
    with pytest.raises(BlobCorrupted), blobs.open(sha) as f:
        f.read()

    blobs.put(b"x" * 1000)
    assert blobs.get(sha) == b"x" * 1000


def test_blob_missing_and_invalid_ids(blobs: BlobStore) -> None:
    with pytest.raises(BlobNotFound):
        blobs.get(SHA_A)
    with pytest.raises(BlobNotFound):
        blobs.open(SHA_A)
    assert not blobs.exists(SHA_A)
    for bad in ("../../etc/passwd", SHA_A.upper(), SHA_A[:-1], ""):
        with pytest.raises(InvalidBlobId):
            blobs.path(bad)
    assert issubclass(BlobCorrupted, FedcareError)


def test_blob_put_stream_50mb_without_holding_it(blobs: BlobStore) -> None:
    chunk = os.urandom(MB)
    expected = hashlib.sha256()
    for i in range(50):
        expected.update(chunk[i:] + chunk[:i])

    def chunks() -> Iterator[bytes]:
        for i in range(50):
            yield chunk[i:] + chunk[:i]

    tracemalloc.start()
    try:
        sha, size = blobs.put_stream(chunks())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert (sha, size) == (expected.hexdigest(), 50 * MB)
    assert peak < 8 * MB, f"put_stream held {peak / MB:.1f} MiB"
    assert blobs.path(sha).stat().st_size == 50 * MB
    streamed = hashlib.sha256()
    with blobs.open(sha) as f:
        while block := f.read(4 * MB):
            streamed.update(block)
    assert streamed.hexdigest() == sha


def test_a_reply_blob_written_without_fsync_reads_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    data = b"update" * 1000
    sha = blobs.put_hashed(data, hashlib.sha256(data).hexdigest(), durable=False)
    assert not synced and blobs.get(sha) == data
    assert blobs.put(b"checkpoint") and len(synced) == 2  # the file and its folder


def test_blob_killed_mid_write_leaves_no_blob(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    code = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from fedcare.hub.store import BlobStore
        def chunks():
            yield b"a" * 1024
            os.kill(os.getpid(), signal.SIGKILL)
        BlobStore(Path({str(root)!r})).put_stream(chunks())
    """)
    done = subprocess.run([sys.executable, "-c", code], timeout=60)

    assert done.returncode == -9
    stored = [p for p in root.rglob("*") if p.is_file() and p.parent.name != "tmp"]
    assert stored == []
    assert not BlobStore(root).exists(hashlib.sha256(b"a" * 1024).hexdigest())


# --------------------------------------------------------------------------- helpers


def running_study(db: Database, *, sites: tuple[str, ...] = ("a", "b"), rounds: int = 3) -> str:
    with db.session() as s:
        repo = StudyRepo(s)
        study = repo.create("study", {"lr": 0.1}, CONFIG_HASH, list(sites), rounds)
        repo.set_status(study.id, StudyStatus.RUNNING)
        repo.start_round(study.id, 1)
        return study.id


def new_tasks(study_id: str, round: int, sites: tuple[str, ...], sha: str = SHA_A) -> list[NewTask]:
    return [NewTask(study_id, round, site, TaskKind.FIT, sha) for site in sites]


def deliver_all(db: Database, study_id: str, round: int, sites: tuple[str, ...]) -> None:
    with db.session() as s:
        TaskRepo(s).create_many(new_tasks(study_id, round, sites))
    for site in sites:
        with db.session() as s:
            assert TaskRepo(s).next_pending_for(site) is not None


def snapshot(db: Database, study_id: str) -> tuple[object, ...]:
    """Everything complete_round may change, for before/after comparisons."""
    with db.session() as s:
        study = s.get(Study, study_id)
        assert study is not None
        rounds = [(r.round, r.status, r.model_sha) for r in StudyRepo(s).rounds(study_id)]
        tasks = [(t.id, t.status) for t in s.scalars(sa.select(Task).order_by(Task.id))]
        return (study.current_round, study.global_model, study.strategy_state,
                study.updated_at, rounds, tasks)


# --------------------------------------------------------------------------- contract


class StoreContract:
    """Every database backend passes these. Subclasses provide the ``db_url`` fixture."""

    @pytest.fixture
    def db_url(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    def db(self, db_url: str) -> Iterator[Database]:
        database = Database(db_url)
        database.migrate()
        yield database
        database.dispose()

    # -- schema

    def test_migrations_create_the_schema_from_empty_and_are_idempotent(
        self, db_url: str
    ) -> None:
        database = Database(db_url)
        try:
            assert set(sa.inspect(database.engine).get_table_names()) == set()
            database.migrate()
            database.migrate()
            upgrade(db_url)

            inspector = sa.inspect(database.engine)
            assert set(inspector.get_table_names()) == TABLES | {"alembic_version"}
            with database.engine.connect() as conn:
                assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).all() \
                    == [("0010",)]  # head
                diff = compare_metadata(
                    MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
                )
            assert diff == [], "models and migrations disagree"
        finally:
            database.dispose()

    def test_a_site_ledger_head_only_grows(self, db: Database) -> None:
        h1, h2, h3 = (hashlib.sha256(bytes([i])).hexdigest() for i in (1, 2, 3))
        with db.session() as s:
            repo = LedgerHeadRepo(s)
            assert repo.get("a") is None
            assert repo.report("a", 2, h2) == HeadRecord(2, h2)
            assert repo.report("a", 2, h2) == HeadRecord(2, h2)  # the same again: no-op
        with db.session() as s:
            repo = LedgerHeadRepo(s)
            assert repo.report("a", 1, h1) == HeadRecord(2, h2, refused=True)  # cut
            assert repo.report("a", 0, "0" * 64) == HeadRecord(2, h2, refused=True)  # deleted
            assert repo.report("a", 2, h3) == HeadRecord(2, h2, refused=True)  # replaced
            assert repo.report("a", 3, h3) == HeadRecord(3, h3)
            assert repo.report("b", 1, h1) == HeadRecord(1, h1)  # per site
        with db.session() as s:
            assert LedgerHeadRepo(s).get("a") == HeadRecord(3, h3)

    def test_timestamps_are_timezone_aware_utc(self, db: Database) -> None:
        with db.session() as s:
            site = SiteRepo(s).upsert_seen("a", "0A1B", "0.1.0", [])
        with db.session() as s:
            loaded = SiteRepo(s).get("a")
        assert loaded is not None
        assert loaded.first_seen.tzinfo is UTC
        assert loaded.first_seen == site.first_seen

    # -- sites

    def test_site_upsert_keeps_first_seen_and_refreshes_the_rest(self, db: Database) -> None:
        with db.session() as s:
            first = SiteRepo(s).upsert_seen("a", "0A1B", "0.1.0", [DatasetInfo("icu", 10)])
        with db.session() as s:
            again = SiteRepo(s).upsert_seen("a", "FF", "0.2.0", [DatasetInfo("icu", 12)])
            SiteRepo(s).upsert_seen("b", "01", "0.2.0", [])

        assert again.first_seen == first.first_seen
        assert again.last_seen >= first.last_seen
        assert (again.cert_serial, again.version) == ("ff", "0.2.0")
        assert again.datasets == [{"name": "icu", "rows": 12}]
        with db.session() as s:
            assert [site.name for site in SiteRepo(s).list()] == ["a", "b"]
            assert SiteRepo(s).get("zzz") is None

    # -- studies

    def test_study_lifecycle_is_enforced(self, db: Database) -> None:
        with db.session() as s:
            study = StudyRepo(s).create("s", {"k": [1, 2]}, CONFIG_HASH, ["a"], 2)
        assert (study.status, study.current_round, study.global_model) == (
            StudyStatus.PENDING, 0, None)

        with db.session() as s:
            StudyRepo(s).set_status(study.id, StudyStatus.RUNNING)
            StudyRepo(s).set_status(study.id, StudyStatus.FAILED, error="boom")
        with pytest.raises(InvalidTransition), db.session() as s:
            StudyRepo(s).set_status(study.id, StudyStatus.RUNNING)
        with db.session() as s:
            loaded = StudyRepo(s).get(study.id)
            assert loaded is not None
            assert (loaded.status, loaded.error, loaded.config) == (
                StudyStatus.FAILED, "boom", {"k": [1, 2]})
            assert [x.id for x in StudyRepo(s).list(status=StudyStatus.FAILED)] == [study.id]

    def test_cancelling_a_study_expires_its_open_tasks(self, db: Database) -> None:
        study_id = running_study(db)
        with db.session() as s:
            TaskRepo(s).create_many(new_tasks(study_id, 1, ("a", "b")))

        with db.session() as s:
            StudyRepo(s).set_status(study_id, StudyStatus.CANCELLED)

        with db.session() as s:
            assert {t.status for t in TaskRepo(s).for_round(study_id, 1)} == {TaskStatus.EXPIRED}
            assert TaskRepo(s).next_pending_for("a") is None

    # -- tasks

    def test_task_creation_is_idempotent(self, db: Database) -> None:
        study_id = running_study(db)
        with db.session() as s:
            created = TaskRepo(s).create_many(new_tasks(study_id, 1, ("a", "b")))
        with db.session() as s:
            TaskRepo(s).next_pending_for("a")
        with db.session() as s:
            again = TaskRepo(s).create_many(new_tasks(study_id, 1, ("b", "a", "c"), sha=SHA_B))

        assert [t.id for t in created] == [f"{study_id}/r1/fit/a", f"{study_id}/r1/fit/b"]
        assert [t.id for t in again] == [task_id(study_id, 1, TaskKind.FIT, x) for x in "bac"]
        assert [t.payload_sha for t in again] == [SHA_A, SHA_A, SHA_B]  # first payload wins
        assert again[1].status == TaskStatus.DELIVERED  # the existing row, untouched
        with db.session() as s:
            assert s.scalar(sa.select(sa.func.count()).select_from(Task)) == 3

    def test_next_pending_for_delivers_oldest_first_and_counts_attempts(
        self, db: Database
    ) -> None:
        study_id = running_study(db)
        with db.session() as s:
            repo = TaskRepo(s)
            repo.create_many(new_tasks(study_id, 1, ("a",)))
            repo.create_many([NewTask(study_id, 1, "a", TaskKind.EVALUATE, SHA_B)])

        with db.session() as s:
            first = TaskRepo(s).next_pending_for("a")
        with db.session() as s:
            second = TaskRepo(s).next_pending_for("a")
            none = TaskRepo(s).next_pending_for("a")
            other_site = TaskRepo(s).next_pending_for("b")

        assert first is not None and second is not None
        assert (first.kind, second.kind) == (TaskKind.FIT, TaskKind.EVALUATE)
        assert (first.status, first.attempts) == (TaskStatus.DELIVERED, 1)
        assert first.delivered_at is not None and first.delivered_at.tzinfo is UTC
        assert none is None and other_site is None

    def test_a_delivered_task_is_redelivered_after_its_lease(self, db: Database) -> None:
        study_id = running_study(db)
        deliver_all(db, study_id, 1, ("a",))

        with db.session() as s:
            assert TaskRepo(s).next_pending_for("a", redeliver_after=timedelta(hours=1)) is None
        with db.session() as s:
            again = TaskRepo(s).next_pending_for("a", redeliver_after=timedelta(0))

        assert again is not None and again.attempts == 2

    def test_next_pending_for_delivers_each_task_once_to_concurrent_callers(
        self, db: Database
    ) -> None:
        study_id = running_study(db, sites=("a",), rounds=100)
        with db.session() as s:
            TaskRepo(s).create_many(
                [NewTask(study_id, r, "a", TaskKind.FIT, SHA_A) for r in range(1, 101)]
            )
        barrier = threading.Barrier(2)
        got: list[list[str]] = [[], []]
        errors: list[BaseException] = []

        def worker(i: int) -> None:
            try:
                barrier.wait(timeout=10)
                while True:
                    with db.session() as s:
                        task = TaskRepo(s).next_pending_for("a")
                    if task is None:
                        return
                    got[i].append(task.id)
            except BaseException as exc:  # noqa: BLE001 (the test re-raises after recording)
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)

        assert errors == []
        assert not set(got[0]) & set(got[1])
        assert len(got[0]) + len(got[1]) == 100
        with db.session() as s:
            attempts = s.scalars(sa.select(Task.attempts)).all()
        assert attempts == [1] * 100

    # -- replies

    def test_reply_closes_the_task_and_a_second_reply_is_rejected(self, db: Database) -> None:
        study_id = running_study(db)
        deliver_all(db, study_id, 1, ("a", "b"))
        tid = task_id(study_id, 1, TaskKind.FIT, "a")

        with db.session() as s:
            reply = ReplyRepo(s).record(tid, "a", SHA_B, 123)
        with pytest.raises(DuplicateReply) as err, db.session() as s:
            ReplyRepo(s).record(tid, "a", SHA_A, 5)

        assert err.value.site == "a"
        assert isinstance(err.value, ProtocolError)
        assert reply.received_at.tzinfo is UTC
        with db.session() as s:
            task = TaskRepo(s).get(tid)
            assert task is not None and task.status == TaskStatus.DONE
            replies = ReplyRepo(s).get_for_round(study_id, 1)
            assert [(r.site, r.blob_sha, r.size) for r in replies] == [("a", SHA_B, 123)]

    def test_error_reply_fails_the_task(self, db: Database) -> None:
        study_id = running_study(db)
        deliver_all(db, study_id, 1, ("a",))
        tid = task_id(study_id, 1, TaskKind.FIT, "a")

        with db.session() as s:
            ReplyRepo(s).record(tid, "a", None, 0, is_error=True, message="out of memory")

        with db.session() as s:
            task = TaskRepo(s).get(tid)
            reply = ReplyRepo(s).get(tid)
        assert task is not None and task.status == TaskStatus.FAILED
        assert reply is not None and (reply.is_error, reply.error_message) == (
            True, "out of memory")

    def test_reply_from_another_site_or_to_an_unknown_task_is_rejected(
        self, db: Database
    ) -> None:
        study_id = running_study(db)
        deliver_all(db, study_id, 1, ("a", "b"))

        with pytest.raises(WrongSite), db.session() as s:
            ReplyRepo(s).record(task_id(study_id, 1, TaskKind.FIT, "a"), "b", SHA_A, 1)
        with pytest.raises(UnknownTask), db.session() as s:
            ReplyRepo(s).record(f"{study_id}/r9/fit/a", "a", SHA_A, 1)
        with db.session() as s:
            assert ReplyRepo(s).get_for_round(study_id, 1) == []

    def test_reply_to_an_undelivered_task_is_rejected(self, db: Database) -> None:
        study_id = running_study(db)
        with db.session() as s:
            TaskRepo(s).create_many(new_tasks(study_id, 1, ("a",)))

        with pytest.raises(NotDelivered), db.session() as s:
            ReplyRepo(s).record(task_id(study_id, 1, TaskKind.FIT, "a"), "a", SHA_A, 1)

    def test_late_replies_are_rejected(self, db: Database) -> None:
        study_id = running_study(db, sites=("a", "b", "c"))
        deliver_all(db, study_id, 1, ("a", "b"))
        with db.session() as s:
            assert TaskRepo(s).expire_round(study_id, 1) == 2
        with pytest.raises(LateReply), db.session() as s:
            ReplyRepo(s).record(task_id(study_id, 1, TaskKind.FIT, "a"), "a", SHA_A, 1)

        with db.session() as s:  # round 2: the round completes before c answers
            StudyRepo(s).complete_round(study_id, 1, {"loss": 1.0}, SHA_A, None)
            StudyRepo(s).start_round(study_id, 2)
        deliver_all(db, study_id, 2, ("c",))
        with db.session() as s:
            StudyRepo(s).complete_round(study_id, 2, {"loss": 0.5}, SHA_B, None)
        with pytest.raises(LateReply), db.session() as s:
            ReplyRepo(s).record(task_id(study_id, 2, TaskKind.FIT, "c"), "c", SHA_A, 1)

    # -- rounds

    def test_complete_round_updates_round_and_study_together(self, db: Database) -> None:
        study_id = running_study(db)
        deliver_all(db, study_id, 1, ("a", "b"))

        with db.session() as s:
            StudyRepo(s).complete_round(study_id, 1, {"loss": 0.7}, SHA_A, SHA_STATE)

        with db.session() as s:
            study = StudyRepo(s).get(study_id)
            rounds = StudyRepo(s).rounds(study_id)
            tasks = TaskRepo(s).for_round(study_id, 1)
        assert study is not None
        assert (study.current_round, study.global_model, study.strategy_state) == (
            1, SHA_A, SHA_STATE)
        assert [(r.round, r.status, r.record, r.model_sha) for r in rounds] == [
            (1, RoundStatus.COMPLETED, {"loss": 0.7}, SHA_A)]
        assert rounds[0].completed_at is not None
        assert {t.status for t in tasks} == {TaskStatus.EXPIRED}  # unanswered, now closed
        with pytest.raises(RoundConflict), db.session() as s:
            StudyRepo(s).complete_round(study_id, 1, {}, SHA_B, None)
        with pytest.raises(RoundConflict), db.session() as s:
            StudyRepo(s).complete_round(study_id, 3, {}, SHA_B, None)

    def test_complete_round_is_atomic_when_the_transaction_fails(
        self, db: Database, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        study_id = running_study(db)
        deliver_all(db, study_id, 1, ("a", "b"))
        before = snapshot(db, study_id)

        with pytest.raises(RuntimeError), db.session() as s:  # fails after the whole call
            StudyRepo(s).complete_round(study_id, 1, {"loss": 0.7}, SHA_A, SHA_STATE)
            raise RuntimeError("crash before commit")
        assert snapshot(db, study_id) == before

        def explode(*args: object, **kwargs: object) -> int:
            raise RuntimeError("disk full")

        monkeypatch.setattr(studies_module, "expire_open_tasks", explode)
        with pytest.raises(RuntimeError), db.session() as s:  # fails after the rounds write
            StudyRepo(s).complete_round(study_id, 1, {"loss": 0.7}, SHA_A, SHA_STATE)
        assert snapshot(db, study_id) == before

    def test_a_killed_hub_leaves_no_half_written_round(self, db: Database, db_url: str) -> None:
        study_id = running_study(db)
        deliver_all(db, study_id, 1, ("a",))
        before = snapshot(db, study_id)
        code = textwrap.dedent(f"""
            import os, signal
            from fedcare.hub.store import Database, StudyRepo
            db = Database({db_url!r})
            with db.session() as s:
                StudyRepo(s).complete_round({study_id!r}, 1, {{}}, {SHA_A!r}, None)
                s.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        """)

        done = subprocess.run([sys.executable, "-c", code], timeout=60)

        assert done.returncode == -9
        assert snapshot(db, study_id) == before
        with db.session() as s:  # and the hub resumes where it was
            StudyRepo(s).complete_round(study_id, 1, {}, SHA_A, None)
        with db.session() as s:
            assert s.get(Round, (study_id, 1)) is not None

    def test_failed_round_can_be_retried(self, db: Database) -> None:
        study_id = running_study(db)
        deliver_all(db, study_id, 1, ("a",))

        with db.session() as s:
            StudyRepo(s).fail_round(study_id, 1, {"error": "too few replies"})
        with db.session() as s:
            row = StudyRepo(s).start_round(study_id, 1)

        assert row.status == RoundStatus.RUNNING
        with pytest.raises(RoundConflict), db.session() as s:
            StudyRepo(s).start_round(study_id, 2)

    # -- events

    def test_events_are_logged_and_listed_newest_first(self, db: Database) -> None:
        study_id = running_study(db)
        deliver_all(db, study_id, 1, ("a",))
        tid = task_id(study_id, 1, TaskKind.FIT, "b")

        with db.session() as s:  # the hub API's pattern: catch, log, commit
            try:
                ReplyRepo(s).record(tid, "b", SHA_A, 1)
            except ProtocolError as exc:
                EventRepo(s).log("reply_rejected", str(exc), study_id=study_id, site=exc.site)
        with db.session() as s:
            EventRepo(s).log("study_started", "go", study_id=study_id)
            EventRepo(s).log("hub_started", "up")

        with db.session() as s:
            recent = EventRepo(s).recent()
            rejected = EventRepo(s).recent(kind="reply_rejected")
            for_b = EventRepo(s).recent(site="b")
            for_study = EventRepo(s).recent(study_id=study_id, limit=1)
        assert [e.kind for e in recent] == ["hub_started", "study_started", "reply_rejected"]
        assert rejected[0].site == "b" and "no task" in rejected[0].message
        assert [e.kind for e in for_b] == ["reply_rejected"]
        assert [e.kind for e in for_study] == ["study_started"]
        assert recent[0].at.tzinfo is UTC


class TestSqliteStore(StoreContract):
    @pytest.fixture
    def db_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'hub.db'}"

    def test_for_data_dir_uses_wal_foreign_keys_and_a_busy_timeout(self, tmp_path: Path) -> None:
        db = Database.for_data_dir(tmp_path / "data")
        try:
            db.migrate()
            with db.engine.connect() as conn:
                pragma = {name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                          for name in ("journal_mode", "foreign_keys", "busy_timeout")}
        finally:
            db.dispose()

        assert (tmp_path / "data" / "hub.db").is_file()
        assert pragma == {"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 30000}

    def test_foreign_keys_are_enforced(self, db: Database) -> None:
        with pytest.raises(sa.exc.IntegrityError), db.session() as s:
            TaskRepo(s).create_many([NewTask("no-such-study", 1, "a", TaskKind.FIT, SHA_A)])
