"""The site's study decisions: which studies await its data steward, and what the steward
decided, in a small SQLite file in the node's state folder (``approvals.db``).

Two processes write it: the running node (it records each study the hub names this site in,
and what it reported to the hub) and the steward's ``fedcare node approve|reject|revoke``.
SQLite's own file locking serializes them (every write is one ``BEGIN IMMEDIATE``
transaction), so neither needs the other to stop, and the node reads the steward's newest
decision on every task: an approval or a revocation takes effect without a restart.

What counts is a decision on the study's *content hash*, which the node computes itself from
the config it received (the hub's word is never taken): a config changed by one byte has
another hash, with no decision, so it is pending again. The hashes listed in the site's
``[approval] studies`` (and ``"any"``, for demos) stay valid as pre-approvals, so old kits
keep working; a decision recorded here overrides them (a revoked study stays revoked).

Tables: ``studies`` (hash, name, the config as received, sites, first seen), ``study_ids``
(which hub study ids carry which hash, and the decision last reported to the hub for each),
``decisions`` (append-only: approved / rejected / revoked / refused, why, who, when).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcare.core.errors import FedcareError
from fedcare.governance.approvals import Decision, check_hash_prefix

__all__ = ["APPROVALS_FILE", "ApprovalError", "ApprovalStore", "DecisionRecord",
           "PendingStudy", "Report", "os_user"]

APPROVALS_FILE = "approvals.db"
#: How long a writer waits for the other process's transaction (seconds).
LOCK_TIMEOUT = 30.0
#: The longest reason a steward may give (characters); the hub stores and shows it.
MAX_REASON = 2000
#: Who approved a study listed in the site's ``[approval] studies``.
PREAPPROVED_BY = "site.toml"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    hash TEXT PRIMARY KEY, name TEXT NOT NULL, config TEXT NOT NULL, sites TEXT NOT NULL,
    first_seen TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS study_ids (
    study_id TEXT PRIMARY KEY, hash TEXT NOT NULL REFERENCES studies(hash),
    seen TEXT NOT NULL, reported TEXT);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, hash TEXT NOT NULL REFERENCES studies(hash),
    decision TEXT NOT NULL CHECK (decision IN ('approved', 'rejected', 'revoked', 'refused')),
    reason TEXT, who TEXT NOT NULL, at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS ix_decisions_hash ON decisions (hash, id);
"""


class ApprovalError(FedcareError):
    """A steward's command that cannot be carried out (unknown hash, wrong state...)."""


@dataclass(frozen=True)
class DecisionRecord:
    decision: Decision
    reason: str | None
    who: str
    at: str


@dataclass(frozen=True)
class PendingStudy:
    """A study as the site knows it, with its latest decision (None: undecided)."""

    hash: str
    name: str
    config: dict[str, Any]
    sites: list[str]
    first_seen: str
    study_ids: list[str]
    decision: DecisionRecord | None


@dataclass(frozen=True)
class Report:
    """A decision the hub has not been told yet, for one of its study ids."""

    study_id: str
    hash: str
    decision: Decision
    reason: str | None
    who: str

    @property
    def key(self) -> str:
        """What is remembered as reported (a changed reason is reported again)."""
        return json.dumps([self.hash, self.decision.value, self.reason])


def os_user() -> str:
    """Who is deciding: the operating-system account running the command."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class ApprovalStore:
    """The decisions file ``path`` (made, owner-only, on first use)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = self._connect()
        try:
            db.executescript(_SCHEMA)  # (runs in its own transaction)
        finally:
            db.close()
        with contextlib.suppress(OSError):
            self.path.chmod(0o600)

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> ApprovalStore:
        return cls(Path(state_dir) / APPROVALS_FILE)

    # -- connections ---------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=LOCK_TIMEOUT, isolation_level=None)
        db.execute("PRAGMA foreign_keys = ON")
        return db

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding the file's write lock from its first statement
        (BEGIN IMMEDIATE: a read-then-write cannot interleave with the other process's)."""
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        db = self._connect()
        try:
            yield db
        finally:
            db.close()

    # -- what the node records -----------------------------------------------------------
    def saw(self, study_id: str, content_hash: str, name: str, config: dict[str, Any],
            sites: list[str]) -> bool:
        """Record that hub study ``study_id`` carries the study ``content_hash`` (computed
        by the node from ``config``); True when the hash is new to this site."""
        now = _now()
        with self._write() as db:
            new = db.execute("SELECT 1 FROM studies WHERE hash = ?",
                             (content_hash,)).fetchone() is None
            if new:
                db.execute("INSERT INTO studies VALUES (?, ?, ?, ?, ?)",
                           (content_hash, name, json.dumps(config, sort_keys=True),
                            json.dumps(list(sites)), now))
            old = db.execute("SELECT hash FROM study_ids WHERE study_id = ?",
                             (study_id,)).fetchone()
            if old is None:
                db.execute("INSERT INTO study_ids VALUES (?, ?, ?, NULL)",
                           (study_id, content_hash, now))
            elif old[0] != content_hash:  # the hub now says another config: decide again
                db.execute("UPDATE study_ids SET hash = ?, reported = NULL WHERE study_id = ?",
                           (content_hash, study_id))
        return new

    def decide(self, prefix: str, decision: Decision, reason: str | None, *,
               who: str | None = None,
               preapproved: Callable[[str], bool] = lambda _: False) -> tuple[str, DecisionRecord]:
        """A steward's decision on the study whose hash starts with ``prefix``; returns the
        full hash and the record. ``preapproved``: whether the site's ``[approval]`` list
        approves a hash (it can then be revoked here)."""
        if decision is Decision.REFUSED:
            raise ApprovalError("a steward approves, rejects or revokes; 'refused' is the "
                                "node's own")
        text = (reason or "").strip()
        if decision is not Decision.APPROVED and not text:
            raise ApprovalError(f"say why the study is {decision.value}: --why \"...\" (the "
                                "researcher sees it)")
        if len(text) > MAX_REASON:
            raise ApprovalError(f"the reason is {len(text)} characters long; at most "
                                f"{MAX_REASON}")
        record = DecisionRecord(decision, text or None, who or os_user(), _now())
        with self._write() as db:
            full = self._resolve(db, prefix)
            current = self._latest(db, full)
            state = (current.decision if current is not None
                     else Decision.APPROVED if preapproved(full) else None)
            self._check_move(full, state, decision)
            db.execute("INSERT INTO decisions (hash, decision, reason, who, at) "
                       "VALUES (?, ?, ?, ?, ?)",
                       (full, decision.value, record.reason, record.who, record.at))
        return full, record

    @staticmethod
    def _check_move(full: str, state: Decision | None, decision: Decision) -> None:
        short = full[:12]
        if decision is Decision.APPROVED and state is Decision.APPROVED:
            raise ApprovalError(f"study {short} is approved already")
        if decision is Decision.REJECTED and state is Decision.APPROVED:
            raise ApprovalError(f"study {short} is approved: withdraw the approval with "
                                f"`fedcare node revoke {short} --why ...`")
        if decision is Decision.REJECTED and state is Decision.REJECTED:
            raise ApprovalError(f"study {short} is rejected already")
        if decision is Decision.REVOKED and state is not Decision.APPROVED:
            now = "undecided" if state is None else state.value
            raise ApprovalError(f"study {short} is {now}, not approved: there is no approval "
                                f"to revoke (`fedcare node reject {short} --why ...` says no "
                                "to a pending study)")

    def refuse(self, content_hash: str, reason: str) -> None:
        """The node's own refusal of a study it knows (policy, data): recorded like a
        decision, so the steward sees it and the hub is told."""
        with self._write() as db:
            current = self._latest(db, content_hash)
            if current is not None and current.decision.negative:
                return  # already said no, with the steward's reason
            db.execute("INSERT INTO decisions (hash, decision, reason, who, at) "
                       "VALUES (?, 'refused', ?, 'node', ?)",
                       (content_hash, reason[:MAX_REASON], _now()))

    # -- what is read --------------------------------------------------------------------
    def resolve(self, prefix: str) -> str:
        """The full hash a steward means by ``prefix`` (>= 8 hex digits, unique)."""
        with self._read() as db:
            return self._resolve(db, prefix)

    def decision(self, content_hash: str) -> DecisionRecord | None:
        """The latest decision on exactly this hash (None: undecided)."""
        with self._read() as db:
            return self._latest(db, content_hash)

    def studies(self) -> list[PendingStudy]:
        """Every study the site knows, oldest first."""
        with self._read() as db:
            rows = db.execute("SELECT hash FROM studies ORDER BY first_seen, hash").fetchall()
            return [self._study(db, h) for (h,) in rows]

    def study(self, prefix: str) -> PendingStudy:
        with self._read() as db:
            return self._study(db, self._resolve(db, prefix))

    def unreported(self, preapproved: Callable[[str], bool]) -> list[Report]:
        """Each hub study id whose decision (recorded here, else a pre-approval) differs
        from the one last reported to the hub. Undecided studies are not reported."""
        out = []
        with self._read() as db:
            rows = db.execute("SELECT study_id, hash, reported FROM study_ids").fetchall()
            for study_id, content_hash, reported in rows:
                got = self._latest(db, content_hash)
                if got is None and preapproved(content_hash):
                    got = DecisionRecord(Decision.APPROVED, "listed in the site's [approval] "
                                         "studies", PREAPPROVED_BY, "")
                if got is None:
                    continue
                report = Report(study_id, content_hash, got.decision, got.reason, got.who)
                if report.key != reported:
                    out.append(report)
        return out

    def reported(self, report: Report) -> None:
        """The hub acknowledged ``report``."""
        with self._write() as db:
            db.execute("UPDATE study_ids SET reported = ? WHERE study_id = ? AND hash = ?",
                       (report.key, report.study_id, report.hash))

    # -- helpers -------------------------------------------------------------------------
    @staticmethod
    def _resolve(db: sqlite3.Connection, prefix: str) -> str:
        try:
            text = check_hash_prefix(prefix)
        except ValueError as exc:
            raise ApprovalError(str(exc)) from None
        hits = [h for (h,) in db.execute(
            "SELECT hash FROM studies WHERE substr(hash, 1, ?) = ? ORDER BY hash",
            (len(text), text))]
        if not hits:
            raise ApprovalError(f"no study with content hash {text}... is known at this site "
                                "(`fedcare node studies` lists them; a study appears once the "
                                "hub names this site in it)")
        if len(hits) > 1:
            raise ApprovalError(f"{text} is the start of {len(hits)} studies' hashes ("
                                + ", ".join(h[:16] + "..." for h in hits)
                                + "); give more digits")
        return hits[0]

    @staticmethod
    def _latest(db: sqlite3.Connection, content_hash: str) -> DecisionRecord | None:
        row = db.execute("SELECT decision, reason, who, at FROM decisions WHERE hash = ? "
                         "ORDER BY id DESC LIMIT 1", (content_hash,)).fetchone()
        return None if row is None else DecisionRecord(Decision(row[0]), row[1], row[2], row[3])

    def _study(self, db: sqlite3.Connection, content_hash: str) -> PendingStudy:
        name, config, sites, first = db.execute(
            "SELECT name, config, sites, first_seen FROM studies WHERE hash = ?",
            (content_hash,)).fetchone()
        ids = [i for (i,) in db.execute("SELECT study_id FROM study_ids WHERE hash = ? "
                                        "ORDER BY seen", (content_hash,))]
        return PendingStudy(content_hash, name, json.loads(config), json.loads(sites), first,
                            ids, self._latest(db, content_hash))
