"""Engine, sessions and migrations for the hub database (SQLite by default, PostgreSQL by URL).

Every state change happens inside :meth:`Database.session`, one transaction that commits on
success and rolls back on any exception, so a hub killed at any moment leaves the database at
the last committed state and nothing half-written.

SQLite specifics. The ``pysqlite`` driver's own transaction handling does not begin a
transaction before a ``SELECT``, so a read-then-write (deliver the next pending task) would not
be atomic. The driver's handling is switched off and every transaction starts with
``BEGIN IMMEDIATE``: it takes SQLite's single write lock up front (waiting up to the busy
timeout), so transactions are serialised and a read-then-write is safe without row locks. WAL
mode lets readers of *other* connections proceed meanwhile; foreign keys are enforced. Keep
transactions short: never hold a session across a long-poll wait.

PostgreSQL runs at READ COMMITTED; repositories take row locks (``FOR UPDATE``, ``SKIP LOCKED``)
where a read decides a write.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from fedcare.core.errors import ConfigError, FedcareError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_S = 30.0
DB_FILENAME = "hub.db"
#: The hub's state (database, checkpoints, with --keep-replies every site's update) is for
#: the hub's own user only, whatever the umask: directories 0700, files 0600 (blobs 0400).
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


class HubStateError(FedcareError):
    """The hub's state folder or database cannot be used (missing rights, read-only file
    system, a file where a folder should be): said in one line at start-up."""


def _unusable(path: Path, why: str) -> HubStateError:
    return HubStateError(f"the hub's state folder {path} cannot be written ({why}); give "
                         "--data-dir a folder this user can write, or make it writable "
                         "(e.g. remount it read-write)")


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) if missing and make it 0700 when it is ours."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid == os.geteuid() and st.st_mode & 0o777 != PRIVATE_DIR_MODE:
        os.chmod(path, PRIVATE_DIR_MODE)


def prepare_data_dir(data_dir: Path) -> Path:
    """Make the hub's state folder owner-only and check, before anything is written, that
    the hub can write it and its database: a read-only mount, a folder of another user or
    a file in its place is one :class:`HubStateError` naming the folder, not a failure deep
    inside the first write (which used to end the hub with a 300-line traceback)."""
    path = Path(data_dir)
    try:
        make_private_dir(path)
    except OSError as exc:
        raise _unusable(path, exc.strerror or type(exc).__name__) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise _unusable(path, "no write access")
    db = path / DB_FILENAME
    if db.exists() and not os.access(db, os.R_OK | os.W_OK):
        raise _unusable(path, f"{DB_FILENAME} is not writable")
    return path


@contextlib.contextmanager
def writable_database(db: Database) -> Iterator[None]:
    """Turn SQLite's "attempt to write a readonly database" / "unable to open database file"
    (a state folder that became read-only, or was removed) into a :class:`HubStateError`."""
    try:
        yield
    except sa.exc.OperationalError as exc:
        text = str(exc.orig)
        if db.dialect != "sqlite" or not any(
                t in text for t in ("readonly", "unable to open", "read-only")):
            raise
        where = Path(db.url.database or DB_FILENAME).parent
        raise _unusable(where, f"database: {text}") from None


def _private_sqlite_file(path: Path) -> None:
    """Create the database file owner-only before SQLite does (SQLite would make it 0644
    under the usual umask, and its -wal and -shm files take the database file's mode), and
    tighten an existing one and its companions."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                                 PRIVATE_FILE_MODE))
        for file in (path, path.with_name(f"{path.name}-wal"),
                     path.with_name(f"{path.name}-shm")):
            with contextlib.suppress(FileNotFoundError):
                st = file.stat()
                if st.st_uid == os.geteuid() and st.st_mode & 0o777 != PRIVATE_FILE_MODE:
                    os.chmod(file, PRIVATE_FILE_MODE)
    except OSError as exc:
        raise _unusable(path.parent, exc.strerror or type(exc).__name__) from None


def normalize_url(url: str | URL) -> URL:
    """Parse a database URL; plain ``postgresql://`` means the psycopg 3 driver we ship."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if parsed.drivername == "postgresql":  # the default driver differs across SQLAlchemy 2.x
        parsed = parsed.set(drivername="postgresql+psycopg")
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(f"unsupported database {backend!r}: use sqlite:/// or postgresql://",
                          source="hub database URL")
    if backend == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise ConfigError("an in-memory SQLite database cannot hold the hub's state: "
                          "give a file path", source="hub database URL")
    return parsed


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see module docstring)
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA foreign_keys = ON")
            # WAL + NORMAL: a commit survives the hub process being killed (kill -9) at any
            # moment; after a power loss the last commits may roll back, which the hub replays
            # deterministically (task ids, seeds) without counting anything twice. Checkpoint
            # blobs are fsynced before the commit; reply blobs (written only with
            # --keep-replies) are not: a lost one is asked for again (HubTransport._reuse).
            # FULL cost ~30 fsyncs a round.
            cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_hub_engine(url: str | URL) -> Engine:
    """An engine for the hub's database with the settings this module documents."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        _private_sqlite_file(Path(parsed.database or ""))
        engine = sa.create_engine(
            parsed,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
        )
        _configure_sqlite(engine)
        return engine
    return sa.create_engine(parsed, pool_pre_ping=True)


def alembic_config() -> Config:
    """Alembic configuration pointing at the migrations shipped inside the package."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    cfg.set_main_option("path_separator", "os")
    return cfg


def _upgrade_engine(engine: Engine, revision: str = "head") -> None:
    cfg = alembic_config()
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Run the hub's migrations down to ``revision`` on ``engine`` (migration tests, and an
    operator undoing an upgrade: every revision's downgrade keeps the rows it can)."""
    cfg = alembic_config()
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, revision)


def upgrade(url: str | URL, revision: str = "head") -> None:
    """Run the hub's migrations up to ``revision`` on the database at ``url`` (idempotent)."""
    engine = create_hub_engine(url)
    try:
        _upgrade_engine(engine, revision)
    finally:
        engine.dispose()


class Database:
    """The hub's database: one engine, a session factory and the migrations."""

    def __init__(self, url: str | URL) -> None:
        self.url = normalize_url(url)
        self.engine = create_hub_engine(self.url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite allows one writer at a time and makes a blocked writer *sleep* in growing
        # steps (1, 2, 5, 10, ... ms) before retrying; with a dozen threads that sleep cost
        # ~0.7 s per round (benchmarks/network.py). Taking turns on an in-process lock hands
        # the database over at once. PostgreSQL has row locks and needs none of this.
        self._turn = threading.RLock() if self.engine.dialect.name == "sqlite" else None

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> Database:
        """The zero-set-up default: a SQLite file ``<data_dir>/hub.db``."""
        path = Path(data_dir).resolve() / DB_FILENAME
        return cls(URL.create("sqlite", database=str(path)))

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.engine.dialect.name

    def migrate(self) -> None:
        """Bring the schema to the newest revision (creates it on an empty database)."""
        _upgrade_engine(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: commits when the block ends, rolls back if it raises.

        Objects loaded in it stay readable after the block (``expire_on_commit=False``) but
        are detached: change state only through a repository inside a session.
        """
        if self._turn is None:
            with self._sessions() as session, session.begin():
                yield session
            return
        with self._turn, self._sessions() as session, session.begin():
            yield session

    def dispose(self) -> None:
        """Close every pooled connection (call on shutdown and in tests)."""
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"Database({self.url.render_as_string(hide_password=True)!r})"
