"""Initial schema: sites, studies, rounds, tasks, replies, events.

Revision ID: 0001
Revises:
Create Date: 2026-11-23

Self-contained on purpose (no import of the current models): a migration describes the schema
as it was when written. Enums are strings with CHECK constraints (no native PostgreSQL enum
types); timestamps are ``timestamptz`` on PostgreSQL and naive UTC on SQLite; JSON is JSONB on
PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _enum(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=16)


def upgrade() -> None:
    op.create_table(
        "sites",
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("cert_serial", sa.String(128), nullable=False),
        sa.Column("first_seen", _ts(), nullable=False),
        sa.Column("last_seen", _ts(), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("datasets", _json(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_sites")),
    )
    op.create_table(
        "studies",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("config", _json(), nullable=False),
        sa.Column("config_hash", sa.String(64), nullable=False),
        sa.Column(
            "status",
            _enum("study_status", "pending", "running", "completed", "failed", "cancelled"),
            nullable=False,
        ),
        sa.Column("rounds_planned", sa.Integer(), nullable=False),
        sa.Column("current_round", sa.Integer(), nullable=False),
        sa.Column("global_model", sa.String(64), nullable=True),
        sa.Column("strategy_state", sa.String(64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.Column("sites", _json(), nullable=False),
        sa.CheckConstraint(
            "current_round >= 0 AND current_round <= rounds_planned",
            name=op.f("ck_studies_current_round_range"),
        ),
        sa.CheckConstraint("rounds_planned >= 0", name=op.f("ck_studies_rounds_planned_nonneg")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_studies")),
    )
    op.create_index(op.f("ix_studies_status"), "studies", ["status"])
    op.create_table(
        "rounds",
        sa.Column("study_id", sa.String(64), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column(
            "status", _enum("round_status", "running", "completed", "failed"), nullable=False
        ),
        sa.Column("started_at", _ts(), nullable=False),
        sa.Column("completed_at", _ts(), nullable=True),
        sa.Column("record", _json(), nullable=True),
        sa.Column("model_sha", sa.String(64), nullable=True),
        sa.ForeignKeyConstraint(
            ["study_id"], ["studies.id"], name=op.f("fk_rounds_study_id_studies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("study_id", "round", name=op.f("pk_rounds")),
    )
    op.create_table(
        "tasks",
        sa.Column("id", sa.String(512), nullable=False),
        sa.Column("study_id", sa.String(64), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("site", sa.String(128), nullable=False),
        sa.Column("kind", _enum("task_kind", "fit", "evaluate"), nullable=False),
        sa.Column("payload_sha", sa.String(64), nullable=False),
        sa.Column(
            "status",
            _enum("task_status", "pending", "delivered", "done", "failed", "expired"),
            nullable=False,
        ),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("delivered_at", _ts(), nullable=True),
        sa.Column("completed_at", _ts(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_tasks_attempts_nonneg")),
        sa.ForeignKeyConstraint(
            ["study_id"], ["studies.id"], name=op.f("fk_tasks_study_id_studies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasks")),
    )
    op.create_index(
        op.f("ix_tasks_site_status_created_at"), "tasks", ["site", "status", "created_at"]
    )
    op.create_index(op.f("ix_tasks_study_id_round"), "tasks", ["study_id", "round"])
    op.create_table(
        "replies",
        sa.Column("task_id", sa.String(512), nullable=False),
        sa.Column("site", sa.String(128), nullable=False),
        sa.Column("blob_sha", sa.String(64), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("received_at", _ts(), nullable=False),
        sa.Column("is_error", sa.Boolean(), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name=op.f("fk_replies_task_id_tasks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_replies")),
    )
    op.create_table(
        "events",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True,
            nullable=False,
        ),
        sa.Column("at", _ts(), nullable=False),
        sa.Column("study_id", sa.String(64), nullable=True),
        sa.Column("site", sa.String(128), nullable=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    op.create_index(op.f("ix_events_at"), "events", ["at"])
    op.create_index(op.f("ix_events_study_id_at"), "events", ["study_id", "at"])


def downgrade() -> None:
    op.drop_table("events")
    op.drop_table("replies")
    op.drop_table("tasks")
    op.drop_table("rounds")
    op.drop_table("studies")
    op.drop_table("sites")
