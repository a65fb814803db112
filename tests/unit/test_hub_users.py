"""The hub's users store (issue 13, point 1): argon2-hashed tokens, verification, the cache
and its invalidation on revoke, unknown ids, the bootstrap import and the audit events."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from fedcare.core.errors import ConfigError
from fedcare.hub.auth import Principal, Role
from fedcare.hub.errors import NotFound
from fedcare.hub.store import Database
from fedcare.hub.store.models import User
from fedcare.hub.users import HASHER, UserExists, UserStore, hash_token, new_token


@pytest.fixture
def db(tmp_path: Path) -> Database:
    db = Database.for_data_dir(tmp_path)
    db.migrate()
    return db


@pytest.fixture
def changes() -> list[tuple[str, str, dict[str, Any]]]:
    return []


@pytest.fixture
def users(db: Database, changes: list[tuple[str, str, dict[str, Any]]]) -> UserStore:
    return UserStore(db, on_change=lambda *a: changes.append(a))


def test_a_new_token_verifies_and_only_its_argon2_hash_is_stored(users: UserStore,
                                                                   db: Database) -> None:
    made = users.add("alice", Role.RESEARCHER, by="admin")
    assert made.token.startswith("fc_")
    assert users.verify(made.token) == Principal("alice", Role.RESEARCHER, None)
    with db.session() as s:
        row = s.get(User, "alice")
        assert row is not None and row.token_hash.startswith("$argon2id$")
        stored = " ".join(str(v) for v in (row.name, row.role, row.site, row.token_id,
                                           row.token_hash))
    assert made.token not in stored and made.token.split("_", 2)[2] not in stored
    assert HASHER.verify(row.token_hash, made.token)


def test_a_wrong_secret_an_unknown_id_or_garbage_is_refused(users: UserStore) -> None:
    made = users.add("alice", Role.RESEARCHER, by="admin")
    token_id = made.token.split("_")[1]
    wrong_secret = f"fc_{token_id}_{'A' * 43}"
    _, unknown_id = new_token()
    for token in (wrong_secret, unknown_id, "garbage", "", made.token + "x"):
        assert users.verify(token) is None, token
    assert users.cached(wrong_secret) is None  # failures are not cached


def test_an_unknown_id_costs_an_argon2_verification_too(users: UserStore) -> None:
    made = users.add("alice", Role.RESEARCHER, by="admin")
    token_id = made.token.split("_")[1]

    def timed(token: str) -> float:
        start = time.perf_counter()
        assert users.verify(token) is None
        return time.perf_counter() - start

    known = min(timed(f"fc_{token_id}_{'B' * 43}") for _ in range(3))
    unknown = min(timed(new_token()[1]) for _ in range(3))
    # without the dummy hash an unknown id answers in microseconds (one indexed SELECT)
    assert unknown > known / 3, (known, unknown)


def test_a_verified_token_is_cached_and_revoke_drops_it_at_once(users: UserStore) -> None:
    made = users.add("alice", Role.RESEARCHER, by="admin")
    assert users.cached(made.token) is None
    assert users.verify(made.token) is not None
    assert users.cached(made.token) == Principal("alice", Role.RESEARCHER, None)
    users.revoke("alice", by="admin")
    assert users.cached(made.token) is None
    assert users.verify(made.token) is None


def test_a_revocation_holds_for_a_new_store_on_the_same_database(db: Database) -> None:
    first = UserStore(db)
    made = first.add("alice", Role.RESEARCHER, by="admin")
    first.revoke("alice", by="admin")
    assert UserStore(db).verify(made.token) is None  # a restarted hub


def test_a_verification_racing_a_revoke_does_not_cache_the_token(users: UserStore,
                                                                  db: Database) -> None:
    made = users.add("alice", Role.RESEARCHER, by="admin")
    real_session = db.session

    @contextmanager
    def read_then_revoke() -> Iterator[Any]:
        with real_session() as s:
            yield s
        db.session = real_session  # type: ignore[method-assign]
        users.revoke("alice", by="admin")  # after the row was read, before the cache insert

    db.session = read_then_revoke  # type: ignore[method-assign]
    assert users.verify(made.token) is not None  # the request in flight still passes
    assert users.cached(made.token) is None
    assert users.verify(made.token) is None


def test_roles_and_sites_are_checked(users: UserStore) -> None:
    with pytest.raises(ConfigError, match="--site"):
        users.add("sam", Role.STEWARD, by="admin")
    with pytest.raises(ConfigError, match="only stewards"):
        users.add("rita", Role.RESEARCHER, "alpha", by="admin")
    with pytest.raises(ConfigError, match="user name"):
        users.add("Bad Name", Role.AUDITOR, by="admin")
    steward = users.add("sam", Role.STEWARD, "alpha", by="admin")
    assert users.verify(steward.token) == Principal("sam", Role.STEWARD, "alpha")


def test_names_are_not_reused_and_unknown_names_are_not_found(users: UserStore) -> None:
    users.add("alice", Role.RESEARCHER, by="admin")
    users.revoke("alice", by="admin")
    with pytest.raises(UserExists):
        users.add("alice", Role.ADMIN, by="admin")
    with pytest.raises(NotFound):
        users.revoke("bob", by="admin")
    listed = users.list()
    assert [(u.name, u.revoked is not None) for u in listed] == [("alice", True)]


def test_adds_and_revokes_are_told_without_tokens_or_hashes(
        users: UserStore, changes: list[tuple[str, str, dict[str, Any]]]) -> None:
    made = users.add("alice", Role.RESEARCHER, by="root")
    users.revoke("alice", by="root")
    users.revoke("alice", by="root")  # already revoked: no second event
    assert [(k, n) for k, n, _ in changes] == [("user_added", "alice"),
                                               ("user_revoked", "alice")]
    assert changes[0][2] == {"user": "alice", "role": "researcher", "site": None, "by": "root"}
    assert made.token not in json.dumps(changes)


def test_the_bootstrap_import_is_idempotent_and_never_resurrects(
        users: UserStore, db: Database, tmp_path: Path) -> None:
    token_id, token = new_token()
    (tmp_path / "users.bootstrap.json").write_text(json.dumps({"users": [
        {"name": "admin", "role": "admin", "site": None, "token_id": token_id,
         "token_hash": hash_token(token)}]}))
    assert users.import_bootstrap(tmp_path) == ["admin"]
    assert users.verify(token) == Principal("admin", Role.ADMIN, None)
    assert users.import_bootstrap(tmp_path) == []
    users.revoke("admin", by="admin")
    assert users.import_bootstrap(tmp_path) == []
    assert users.verify(token) is None
    with db.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(User)) == 1


def test_a_bootstrap_entry_with_a_plaintext_token_is_refused(users: UserStore,
                                                             tmp_path: Path) -> None:
    token_id, token = new_token()
    (tmp_path / "users.bootstrap.json").write_text(json.dumps({"users": [
        {"name": "admin", "role": "admin", "token_id": token_id, "token_hash": token}]}))
    with pytest.raises(ConfigError, match="argon2"):
        users.import_bootstrap(tmp_path)
