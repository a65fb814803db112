"""The hub's tables as typed SQLAlchemy 2 declarative models.

The schema is *created by the Alembic migrations* in ``migrations/versions``, never by
``metadata.create_all``; these models must stay identical to what the migrations build (a test
compares them). Blobs (models, updates, task payloads) are referenced by sha256 only.

Every timestamp is timezone-aware UTC in Python. PostgreSQL stores ``timestamptz``; SQLite has
no time zone type, so :class:`UtcDateTime` stores naive UTC and re-attaches UTC on load (and
refuses naive datetimes on the way in, which would otherwise be silently misread).
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from fedcare.core.messages import TaskKind

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SHA_LEN = 64
NAME_LEN = 128


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(sa.TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: the hub stores timezone-aware UTC only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


#: JSON everywhere; JSONB on PostgreSQL (indexable, compact, no duplicate keys).
Json = sa.JSON().with_variant(JSONB(), "postgresql")


def _enum(cls: type[enum.Enum], name: str) -> sa.Enum:
    """A string column with a CHECK constraint: portable, and new values need no type DDL."""
    return sa.Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        validate_strings=True,
        values_callable=lambda e: [m.value for m in e],
    )


class StudyStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    #: Stopped because the hub could not write its storage (disk full, read-only, I/O error):
    #: not terminal, its open tasks stay open; ``fedcare study resume`` continues it from its
    #: last completed round once the storage is fixed.
    PAUSED = "paused"
    #: Submitted, waiting until every participating site approved its content hash (see
    #: :mod:`fedcare.governance.approvals`); nothing is sent to any site meanwhile.
    PENDING_APPROVAL = "pending_approval"
    #: A site rejected it (or its node refused it) before it started: the reason is kept.
    REJECTED = "rejected"
    #: Its approval deadline (``study.approval_deadline_hours``) passed with sites undecided.
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        return self in (StudyStatus.COMPLETED, StudyStatus.FAILED, StudyStatus.CANCELLED,
                        StudyStatus.REJECTED, StudyStatus.EXPIRED)


class RoundStatus(enum.StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class TaskStatus(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DONE = "done"
    FAILED = "failed"
    EXPIRED = "expired"


#: A task still waiting for its reply (may still be delivered, answered or expired).
OPEN_TASK_STATUSES = (TaskStatus.PENDING, TaskStatus.DELIVERED)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class Site(Base):
    """A site node as last seen by the hub (identity is its certificate serial)."""

    __tablename__ = "sites"

    name: Mapped[str] = mapped_column(sa.String(NAME_LEN), primary_key=True)
    cert_serial: Mapped[str] = mapped_column(sa.String(NAME_LEN))
    first_seen: Mapped[datetime] = mapped_column(UtcDateTime())
    last_seen: Mapped[datetime] = mapped_column(UtcDateTime())
    version: Mapped[str] = mapped_column(sa.String(64))
    #: ``[{"name": str, "rows": int}, ...]``
    datasets: Mapped[list[dict[str, Any]]] = mapped_column(Json)


class Study(Base):
    __tablename__ = "studies"
    __table_args__ = (
        sa.CheckConstraint("rounds_planned >= 0", name="rounds_planned_nonneg"),
        sa.CheckConstraint(
            "current_round >= 0 AND current_round <= rounds_planned", name="current_round_range"
        ),
    )

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(256))
    config: Mapped[dict[str, Any]] = mapped_column(Json)
    config_hash: Mapped[str] = mapped_column(sa.String(SHA_LEN))
    status: Mapped[StudyStatus] = mapped_column(_enum(StudyStatus, "study_status"), index=True)
    rounds_planned: Mapped[int] = mapped_column(sa.Integer)
    #: The last COMPLETED round; 0 before the first one completes.
    current_round: Mapped[int] = mapped_column(sa.Integer, default=0)
    global_model: Mapped[str | None] = mapped_column(sa.String(SHA_LEN))
    strategy_state: Mapped[str | None] = mapped_column(sa.String(SHA_LEN))
    error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    #: Names of the participating sites.
    sites: Mapped[list[str]] = mapped_column(Json)
    #: The user who submitted it (migration 0008); None for studies submitted before the hub
    #: had users (the shared researcher token), see :mod:`fedcare.hub.access`.
    owner: Mapped[str | None] = mapped_column(sa.String(NAME_LEN))


class Round(Base):
    __tablename__ = "rounds"

    study_id: Mapped[str] = mapped_column(
        sa.ForeignKey("studies.id", ondelete="CASCADE"), primary_key=True
    )
    round: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    status: Mapped[RoundStatus] = mapped_column(_enum(RoundStatus, "round_status"))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    #: The per-round history record (JSON-able).
    record: Mapped[dict[str, Any] | None] = mapped_column(Json)
    #: Blob of the global model after this round.
    model_sha: Mapped[str | None] = mapped_column(sa.String(SHA_LEN))


class Task(Base):
    """One unit of work for one site; its id is deterministic so re-creating it is a no-op."""

    __tablename__ = "tasks"
    __table_args__ = (
        sa.Index("ix_tasks_site_status_created_at", "site", "status", "created_at"),
        sa.Index("ix_tasks_study_id_round", "study_id", "round"),
        sa.CheckConstraint("attempts >= 0", name="attempts_nonneg"),
    )

    id: Mapped[str] = mapped_column(sa.String(512), primary_key=True)
    study_id: Mapped[str] = mapped_column(sa.ForeignKey("studies.id", ondelete="CASCADE"))
    round: Mapped[int] = mapped_column(sa.Integer)
    site: Mapped[str] = mapped_column(sa.String(NAME_LEN))
    kind: Mapped[TaskKind] = mapped_column(_enum(TaskKind, "task_kind"))
    payload_sha: Mapped[str] = mapped_column(sa.String(SHA_LEN))
    status: Mapped[TaskStatus] = mapped_column(_enum(TaskStatus, "task_status"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)

    reply: Mapped[Reply | None] = relationship(back_populates="task", lazy="raise")


class Reply(Base):
    """A site's answer to a task; the primary key makes "answered at most once" a DB rule."""

    __tablename__ = "replies"

    task_id: Mapped[str] = mapped_column(
        sa.ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    site: Mapped[str] = mapped_column(sa.String(NAME_LEN))
    #: The sha256 of the reply's bytes (update or error report): the record of what the site
    #: sent. Its blob is in the store only when the hub keeps replies (``--keep-replies``);
    #: by default the bytes are held in memory until the round is aggregated.
    blob_sha: Mapped[str | None] = mapped_column(sa.String(SHA_LEN))
    size: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())
    is_error: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    error_message: Mapped[str | None] = mapped_column(sa.Text)

    task: Mapped[Task] = relationship(back_populates="reply", lazy="raise")


class Event(Base):
    """The hub's operations log (rejected submissions, status changes, ...)."""

    __tablename__ = "events"
    __table_args__ = (sa.Index("ix_events_study_id_at", "study_id", "at"),)

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    study_id: Mapped[str | None] = mapped_column(sa.String(64))
    site: Mapped[str | None] = mapped_column(sa.String(NAME_LEN))
    kind: Mapped[str] = mapped_column(sa.String(64))
    message: Mapped[str] = mapped_column(sa.Text)


class LedgerHead(Base):
    """The longest privacy-ledger head a site reported (entry count and the SHA-256 of its
    last line): the anchor that shows a site's ledger was cut or deleted afterwards. The hub
    learns how many tasks the site charged, nothing else (see fedcare.node.ledger_anchor)."""

    __tablename__ = "ledger_heads"
    __table_args__ = (sa.CheckConstraint("count >= 0", name="count_nonneg"),)

    site: Mapped[str] = mapped_column(sa.String(NAME_LEN), primary_key=True)
    count: Mapped[int] = mapped_column(sa.BigInteger)
    hash: Mapped[str] = mapped_column(sa.String(SHA_LEN))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class ModelEntry(Base):
    """A released global model (:class:`fedcare.engine.registry.RegistryEntry` as JSON).
    Immutable: the database refuses an UPDATE or DELETE (migration 0007's triggers)."""

    __tablename__ = "model_registry"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    study_id: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    study_hash: Mapped[str] = mapped_column(sa.String(SHA_LEN))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    entry: Mapped[dict[str, Any]] = mapped_column(Json)


class ExportRequest(Base):
    """A request to take one of a study's files out of the federation (the airlock,
    :mod:`fedcare.governance.airlock`). ``digest``: the SHA-256 of the file when requested;
    the download serves those bytes or nothing. A refused or rejected request never changes
    again (migration 0009's triggers)."""

    __tablename__ = "export_requests"
    __table_args__ = (sa.CheckConstraint(
        "status IN ('refused_by_checks', 'awaiting_stewards', 'approved', 'rejected', "
        "'downloaded')", name="status"), sa.CheckConstraint("quorum >= 1", name="quorum_pos"))

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    study_id: Mapped[str] = mapped_column(sa.ForeignKey("studies.id"), index=True)
    artifact: Mapped[str] = mapped_column(sa.String(NAME_LEN))
    requester: Mapped[str] = mapped_column(sa.String(NAME_LEN), index=True)
    reason: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    digest: Mapped[str] = mapped_column(sa.String(SHA_LEN))
    size: Mapped[int] = mapped_column(sa.BigInteger)
    #: :class:`fedcare.governance.airlock.CheckResult` as JSON.
    checks: Mapped[dict[str, Any]] = mapped_column(Json)
    status: Mapped[str] = mapped_column(sa.String(32))
    #: The participating sites and the approvals needed, fixed when the request was made.
    sites: Mapped[list[str]] = mapped_column(Json)
    quorum: Mapped[int] = mapped_column(sa.Integer)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class ExportDecision(Base):
    """One site steward's decision on an export request: one per site (the primary key),
    never changed or deleted (migration 0009's triggers)."""

    __tablename__ = "export_decisions"

    export_id: Mapped[str] = mapped_column(sa.ForeignKey("export_requests.id"),
                                           primary_key=True)
    site: Mapped[str] = mapped_column(sa.String(NAME_LEN), primary_key=True)
    user: Mapped[str] = mapped_column(sa.String(NAME_LEN))
    approve: Mapped[bool] = mapped_column(sa.Boolean)
    reason: Mapped[str] = mapped_column(sa.Text)
    decided_at: Mapped[datetime] = mapped_column(UtcDateTime())


class User(Base):
    """A person at the hub (migration 0008): a role, the site a steward speaks for, and the
    public id and argon2 hash of their API token; the token itself is never stored. A
    revoked user keeps the row (``revoked`` set) so the name is never reused for someone
    else and the audit trail's entries about it stay unambiguous."""

    __tablename__ = "users"

    name: Mapped[str] = mapped_column(sa.String(NAME_LEN), primary_key=True)
    role: Mapped[str] = mapped_column(sa.String(16))
    site: Mapped[str | None] = mapped_column(sa.String(NAME_LEN))
    token_id: Mapped[str] = mapped_column(sa.String(32), unique=True)
    token_hash: Mapped[str] = mapped_column(sa.String(256))
    created: Mapped[datetime] = mapped_column(UtcDateTime())
    revoked: Mapped[datetime | None] = mapped_column(UtcDateTime())


class SiteDecision(Base):
    """A site's latest decision on a study (approved, rejected, revoked, refused), as its
    node reported it. What each site decided, and when, is also in the audit trail."""

    __tablename__ = "site_decisions"

    study_id: Mapped[str] = mapped_column(
        sa.ForeignKey("studies.id", ondelete="CASCADE"), primary_key=True
    )
    site: Mapped[str] = mapped_column(sa.String(NAME_LEN), primary_key=True)
    decision: Mapped[str] = mapped_column(sa.String(16))
    #: The content hash the site computed from the config it received ("" when it could not).
    content_hash: Mapped[str] = mapped_column(sa.String(SHA_LEN))
    reason: Mapped[str | None] = mapped_column(sa.Text)
    decided_at: Mapped[datetime] = mapped_column(UtcDateTime())
