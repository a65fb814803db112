"""The hub's state folder: owner-only whatever the umask (it holds checkpoints and, with
--keep-replies, every site's update), and refused in one line when it cannot be written."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedcare.hub.service import HubService, NeverRevoked
from fedcare.hub.store.database import HubStateError, prepare_data_dir


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_state_folder_is_owner_only_under_umask_022(tmp_path: Path, umask_022: None) -> None:
    data = tmp_path / "deep" / "hubdata"
    svc = HubService(data, revocation=NeverRevoked(),
                     keep_replies=True)
    try:
        svc.event("test", "a write, so the WAL and shared-memory files exist")
        sha = svc.blobs.put(b"a site's update")
        assert _mode(data) == 0o700
        for name in ("hub.db", "hub.db-wal", "hub.db-shm"):
            assert (data / name).exists() and _mode(data / name) == 0o600, name
        assert _mode(data / "blobs") == 0o700
        assert _mode(data / "blobs" / "tmp") == 0o700
        assert _mode(svc.blobs.path(sha).parent) == 0o700
        assert _mode(svc.blobs.path(sha)) == 0o400
    finally:
        svc.stop()
        svc.db.dispose()


def test_a_state_folder_made_by_an_older_version_is_tightened(tmp_path: Path,
                                                             umask_022: None) -> None:
    data = tmp_path / "hubdata"
    (data / "blobs").mkdir(parents=True, mode=0o755)
    os.chmod(data, 0o755)
    (data / "hub.db").touch(mode=0o644)
    svc = HubService(data, revocation=NeverRevoked())
    try:
        assert _mode(data) == 0o700 and _mode(data / "blobs") == 0o700
        assert _mode(data / "hub.db") == 0o600
    finally:
        svc.stop()
        svc.db.dispose()


def test_a_file_in_place_of_the_state_folder_is_one_clear_error(tmp_path: Path) -> None:
    file = tmp_path / "hubdata"
    file.write_text("not a folder")
    with pytest.raises(HubStateError, match=r"folder .*hubdata cannot be written.*--data-dir"):
        prepare_data_dir(file)
    with pytest.raises(HubStateError):
        HubService(file, revocation=NeverRevoked())
    assert file.read_text() == "not a folder"


def test_a_database_that_refuses_writes_is_one_clear_error(tmp_path: Path) -> None:
    """SQLite's own "attempt to write a readonly database" (here: a connection made
    read-only with ``PRAGMA query_only``; in the audit, a read-only mount) is a
    HubStateError naming the folder, not a traceback."""
    import sqlalchemy as sa

    from fedcare.hub.store import EventRepo
    from fedcare.hub.store.database import Database, writable_database

    db = Database.for_data_dir(tmp_path)
    db.migrate()
    db.dispose()

    @sa.event.listens_for(db.engine, "connect")
    def _read_only(dbapi_conn: object, _record: object) -> None:
        dbapi_conn.execute("PRAGMA query_only = ON")  # type: ignore[attr-defined]

    try:
        with pytest.raises(HubStateError, match=rf"{tmp_path} cannot be written.*readonly"), \
                writable_database(db), db.session() as s:
            EventRepo(s).log("test", "refused")
    finally:
        db.dispose()


def test_the_ckks_key_relay_is_owner_only_under_umask_022(tmp_path: Path,
                                                          umask_022: None) -> None:
    """The relay came after the state folder was made owner-only (audit re-run, F22): its
    folders and the site certificates it keeps are owner-only too, like the sealed keys."""
    from fedcare.hub.keyrelay import KeyRelay

    relay = KeyRelay(tmp_path / "keyrelay")
    relay.remember_certificate("alpha", b"certificate bytes")
    relay.put_sealed("s1", ["alpha", "beta"], "alpha", "beta", b"sealed key")
    for path in [*(tmp_path / "keyrelay").rglob("*"), tmp_path / "keyrelay"]:
        assert _mode(path) == (0o700 if path.is_dir() else 0o600), path
