"""The hub's users: the ``users`` table (add, list, revoke, import) and token verification.

A token is ``fc_<id>_<secret>``: ``id`` (16 hex digits) is public and finds the user's row;
``secret`` (43 URL-safe characters, 256 random bits) is never stored. The row holds an
argon2id hash of the whole token (``argon2-cffi``'s :class:`PasswordHasher`) and nothing
from which the token could be rebuilt: a copy of the hub's database is not a list of working
tokens.

Verifying costs one argon2 hash (tens of ms). A verified token is therefore remembered in
memory, keyed by the SHA-256 of the token (the token itself is not kept either), so the next
requests pay a dictionary lookup. Revoking a user drops their cached tokens in the same call
and bumps a generation counter, so a verification that raced the revocation cannot put the
token back: a revoked token fails on the very next request. The revocation is in the
database, so it holds after a restart (the cache starts empty).

A token with an unknown id, or one that is not a token at all, is verified against a dummy
hash: the answer takes the same time as for a known id with a wrong secret, so timing does
not tell which ids exist. Failures are not cached.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import re
import secrets
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from fedcare.core.errors import ConfigError, FedcareError
from fedcare.hub.auth import Principal, Role
from fedcare.hub.errors import NotFound
from fedcare.hub.store import Database
from fedcare.hub.store.models import User, utcnow

__all__ = ["BOOTSTRAP_FILE", "NewUser", "UserExists", "UserInfo", "UserStore", "hash_token",
           "new_token", "parse_role"]

#: User names: a lower-case letter or digit, then lower-case letters, digits, ``.``, ``_``,
#: ``-`` (they appear in audit entries and study owners: no spaces, no look-alikes).
USER_NAME = re.compile(r"[a-z0-9][a-z0-9._\-]{0,63}")
#: Site names as provisioning allows them.
SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,127}")
_TOKEN = re.compile(r"fc_([0-9a-f]{16})_([A-Za-z0-9_\-]{43})")
#: Verified tokens remembered (by SHA-256); a hub has far fewer active users.
CACHE_SIZE = 4096
#: Users that provisioning made, as argon2 hashes, imported by the hub at start.
BOOTSTRAP_FILE = "users.bootstrap.json"

#: argon2id at OWASP's minimum (19 MiB, 2 passes, 1 lane): a token's 256 random bits, not
#: the hash's cost, make guessing hopeless; the hash keeps a stolen database from being a
#: list of tokens, and a cheaper hash keeps a cache miss (and the dummy check) at ~20 ms.
HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


class UserExists(FedcareError):
    """A user of that name exists (or existed: a revoked name is not reused). Answered 409."""


@dataclass(frozen=True)
class UserInfo:
    """A user as listed: never the token or its hash."""

    name: str
    role: Role
    site: str | None
    created: datetime
    revoked: datetime | None


@dataclass(frozen=True)
class NewUser:
    """A user just added and their token: shown once, stored nowhere."""

    user: UserInfo
    token: str


def new_token() -> tuple[str, str]:
    """(token id, token) for a new user."""
    token_id = secrets.token_hex(8)
    return token_id, f"fc_{token_id}_{secrets.token_urlsafe(32)}"


def hash_token(token: str) -> str:
    return HASHER.hash(token)


def parse_role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise ConfigError(f"unknown role {role!r}: use one of "
                          f"{', '.join(r.value for r in Role)}") from None


def check_user(name: str, role: Role, site: str | None) -> None:
    """Refuse a name, or a role and site that do not go together, saying what to change."""
    if not USER_NAME.fullmatch(name):
        raise ConfigError(f"user name {name!r}: use 1-64 lower-case letters, digits, '.', '_' "
                          "or '-', starting with a letter or digit")
    if role is Role.STEWARD and not site:
        raise ConfigError("a steward speaks for one site: give the site (--site NAME)")
    if role is not Role.STEWARD and site:
        raise ConfigError(f"only stewards have a site; a {role.value} sees studies by role, "
                          "not by site: leave out --site")
    if site is not None and not SITE_NAME.fullmatch(site):
        raise ConfigError(f"site name {site!r} is not a valid site name")


def _info(row: User) -> UserInfo:
    return UserInfo(row.name, Role(row.role), row.site, row.created, row.revoked)


class UserStore:
    """The users of the hub's database. ``on_change(kind, name, details)``: told of every
    add and revoke (the hub's audit trail), never with a token or a hash."""

    def __init__(self, db: Database, *,
                 on_change: Callable[[str, str, dict[str, Any]], None] | None = None) -> None:
        self.db = db
        self._on_change = on_change
        self._lock = threading.Lock()
        self._cache: dict[bytes, Principal] = {}
        self._generation = 0
        self._dummy = HASHER.hash(secrets.token_urlsafe(32))

    # -- who is this? ---------------------------------------------------------------------
    def cached(self, token: str) -> Principal | None:
        """The user of a token verified before and not revoked since (no argon2)."""
        return self._cache.get(hashlib.sha256(token.encode()).digest())

    def verify(self, token: str) -> Principal | None:
        """The user holding ``token``, or None (unknown, wrong or revoked). Blocking: one
        argon2 verification on a cache miss."""
        key = hashlib.sha256(token.encode()).digest()
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        with self._lock:
            generation = self._generation
        match = _TOKEN.fullmatch(token)
        row = None
        if match is not None:
            with self.db.session() as s:
                row = s.scalar(sa.select(User).where(User.token_id == match.group(1)))
                if row is not None:
                    s.expunge(row)
        usable = row is not None and row.revoked is None
        try:
            HASHER.verify(row.token_hash if usable and row is not None else self._dummy,
                          token)
        except (VerificationError, InvalidHashError):
            return None
        if not usable or row is None:
            return None
        principal = Principal(row.name, Role(row.role), row.site)
        with self._lock:
            if generation == self._generation:  # no revocation since the row was read
                if len(self._cache) >= CACHE_SIZE:
                    self._cache.clear()
                self._cache[key] = principal
        return principal

    # -- the table ------------------------------------------------------------------------
    def add(self, name: str, role: Role, site: str | None = None, *, by: str) -> NewUser:
        """A new user and their token (returned once). ``by``: who added them (audit)."""
        check_user(name, role, site)
        token_id, token = new_token()
        info = self._insert(name, role, site, token_id, hash_token(token))
        self._changed("user_added", name, {"user": name, "role": role.value, "site": site,
                                           "by": by})
        return NewUser(info, token)

    def _insert(self, name: str, role: Role, site: str | None, token_id: str,
                token_hash: str) -> UserInfo:
        with self.db.session() as s:
            if s.get(User, name) is not None:
                raise UserExists(f"user {name!r} exists (or existed: a revoked user's name is "
                                 "not given to someone else); choose another name")
            row = User(name=name, role=role.value, site=site, token_id=token_id,
                       token_hash=token_hash, created=utcnow(), revoked=None)
            s.add(row)
            s.flush()
            return _info(row)

    def list(self) -> list[UserInfo]:
        with self.db.session() as s:
            return [_info(r) for r in s.scalars(sa.select(User).order_by(User.name))]

    def revoke(self, name: str, *, by: str) -> UserInfo:
        """Revoke ``name``'s token, at once and for good (the row stays, marked)."""
        with self.db.session() as s:
            row = s.get(User, name)
            if row is None:
                raise NotFound(f"no user {name!r} (see `fedcare users list`)")
            already = row.revoked is not None
            if not already:
                row.revoked = utcnow()
            info = _info(row)
        with self._lock:
            self._generation += 1
            self._cache = {k: p for k, p in self._cache.items() if p.user != name}
        if not already:
            self._changed("user_revoked", name, {"user": name, "role": info.role.value,
                                                 "by": by})
        return info

    def import_hashed(self, entries: Iterable[dict[str, Any]]) -> builtins.list[str]:
        """Add users made elsewhere (provisioning's bootstrap file) by their token id and
        hash; a name already in the table is left as it is (so importing again, or after
        the user was revoked, changes nothing). Returns the names added."""
        added = []
        for e in entries:
            try:
                name, role = str(e["name"]), parse_role(str(e["role"]))
                site = None if e.get("site") is None else str(e["site"])
                token_id, token_hash = str(e["token_id"]), str(e["token_hash"])
            except (KeyError, TypeError) as exc:
                raise ConfigError(f"bootstrap user entry without {exc}: {sorted(e)}") from None
            check_user(name, role, site)
            if not re.fullmatch(r"[0-9a-f]{16}", token_id) or not token_hash.startswith(
                    "$argon2"):
                raise ConfigError(f"bootstrap user {name!r}: token_id must be 16 hex digits "
                                  "and token_hash an argon2 hash")
            try:
                self._insert(name, role, site, token_id, token_hash)
            except UserExists:
                continue
            added.append(name)
            self._changed("user_added", name, {"user": name, "role": role.value, "site": site,
                                               "by": "provisioning"})
        return added

    def import_bootstrap(self, hub_dir: Path) -> builtins.list[str]:
        """Import ``hub_dir/users.bootstrap.json`` (when present): see :meth:`import_hashed`."""
        path = Path(hub_dir) / BOOTSTRAP_FILE
        if not path.is_file():
            return []
        try:
            doc = json.loads(path.read_text())
            entries = doc["users"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"cannot read the hub's bootstrap users {path}: {exc}; "
                              "provisioning writes it ({\"users\": [...]})") from None
        return self.import_hashed(entries)

    def _changed(self, kind: str, name: str, details: dict[str, Any]) -> None:
        if self._on_change is not None:
            self._on_change(kind, name, details)
