"""A throwaway PostgreSQL server for tests (session-scoped fixture ``pg_server``).

``FEDCARE_TEST_PG_URL`` (a server URL whose user may ``CREATE DATABASE``) is used as is.
Otherwise Debian's binaries (``/usr/lib/postgresql/*/bin``) run a private cluster in a
temporary directory: ``initdb`` (as user ``postgres`` when we are root, since PostgreSQL
refuses to run as root), ``pg_ctl start`` on a free 127.0.0.1 port with its unix socket in the
same directory, fsync off. It is stopped and deleted at the end of the session, whatever
happened. Missing binaries are installed with apt only when running as root with ``CI`` or
``FEDCARE_INSTALL_PG=1`` set; otherwise the tests are skipped with the reason.

Each test gets its own fresh database from :meth:`PgServer.create_database`.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy.engine import URL, make_url

START_TIMEOUT_S = 30
APT_TIMEOUT_S = 300


@dataclass
class PgServer:
    """A reachable server; :meth:`create_database` hands out fresh databases."""

    url: URL
    _counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def _admin(self) -> object:
        import psycopg

        return psycopg.connect(
            host=self.url.host, port=self.url.port, user=self.url.username,
            password=self.url.password, dbname=self.url.database or "postgres",
            autocommit=True, connect_timeout=10,
        )

    def create_database(self) -> str:
        """Create an empty database and return its SQLAlchemy URL (as a string)."""
        name = f"fedcare_t{os.getpid()}_{next(self._counter)}"
        with self._admin() as conn:  # type: ignore[attr-defined]
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url.set(database=name).render_as_string(hide_password=False)

    def drop_database(self, url: str) -> None:
        name = make_url(url).database
        with self._admin() as conn:  # type: ignore[attr-defined]
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _pg_bindir() -> Path | None:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit()
        else 0,
    )
    return Path(found[-1]).parent if found else None


def _install_pg() -> str | None:
    """Install PostgreSQL with apt if allowed; return why not, or None on success."""
    if os.geteuid() != 0:
        return "PostgreSQL binaries not found and not root (set FEDCARE_TEST_PG_URL)"
    if not (os.environ.get("CI") or os.environ.get("FEDCARE_INSTALL_PG") == "1"):
        return ("PostgreSQL binaries not found (/usr/lib/postgresql/*/bin/initdb); set CI or "
                "FEDCARE_INSTALL_PG=1 to apt-get install them, or set FEDCARE_TEST_PG_URL")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "postgresql"]):
            subprocess.run(cmd, check=True, env=env, timeout=APT_TIMEOUT_S,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except (subprocess.SubprocessError, OSError) as exc:
        return f"could not install PostgreSQL with apt-get: {exc}"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: drop to the ``postgres`` user when we are root."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd: list[str], timeout: float) -> None:
    done = subprocess.run(_as_postgres(cmd), capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr}")


@contextlib.contextmanager
def _local_cluster(bindir: Path) -> Iterator[URL]:
    # Not under pytest's tmp_path: its parents are 0700 and the postgres user must enter it.
    root = Path(tempfile.mkdtemp(prefix="fedcare-pg-"))
    data, sockets, log = root / "data", root / "sock", root / "server.log"
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(sockets, "postgres", "postgres")
    port = _free_port()
    started = False
    try:
        _run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
              "-E", "UTF8", "--no-instructions"], timeout=60)
        options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        started = True
        _run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options,
              "-w", "-t", str(START_TIMEOUT_S), "start"], timeout=START_TIMEOUT_S + 10)
        yield URL.create("postgresql+psycopg", username="postgres", host="127.0.0.1",
                         port=port, database="postgres")
    except RuntimeError as exc:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"{exc}\nserver log:\n{tail}") from None
    finally:
        if started:
            with contextlib.suppress(Exception):
                _run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                      "-t", "20", "stop"], timeout=30)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A PostgreSQL server for the whole test session (see the module docstring)."""
    given = os.environ.get("FEDCARE_TEST_PG_URL")
    if given:
        url = make_url(given)
        if url.drivername == "postgresql":
            url = url.set(drivername="postgresql+psycopg")
        yield PgServer(url)
        return
    bindir = _pg_bindir()
    if bindir is None:
        reason = _install_pg()
        bindir = _pg_bindir()
        if bindir is None:
            pytest.skip(reason or "PostgreSQL installed but initdb not found")
    with _local_cluster(bindir) as url:
        yield PgServer(url)
