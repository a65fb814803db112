"""Study approval by the sites: the ``site_decisions`` table and the study statuses
``pending_approval``, ``rejected`` and ``expired``.

Revision ID: 0010
Revises: 0007

The status CHECK constraint is widened in place (:func:`swap_check`: no table is copied or
dropped, see :mod:`fedcare.hub.store.migrations.check_constraints`).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from fedcare.hub.store.migrations.check_constraints import in_clause, swap_check

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NAME = "ck_studies_study_status"
_BEFORE = ("pending", "running", "completed", "failed", "cancelled", "paused")
_AFTER = (*_BEFORE, "pending_approval", "rejected", "expired")


def upgrade() -> None:
    swap_check("studies", _NAME, in_clause("status", _BEFORE), in_clause("status", _AFTER))
    op.create_table(
        "site_decisions",
        sa.Column("study_id", sa.String(64), nullable=False),
        sa.Column("site", sa.String(128), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"], ondelete="CASCADE",
                                name=op.f("fk_site_decisions_study_id_studies")),
        sa.PrimaryKeyConstraint("study_id", "site", name=op.f("pk_site_decisions")),
    )


def downgrade() -> None:
    op.drop_table("site_decisions")
    # Not representable before this revision: a study still waiting for approval never
    # started (cancelled); one rejected or expired failed (its reason stays in ``error``).
    op.execute(sa.text("UPDATE studies SET status = 'cancelled' "
                       "WHERE status = 'pending_approval'"))
    op.execute(sa.text("UPDATE studies SET status = 'failed' "
                       "WHERE status IN ('rejected', 'expired')"))
    swap_check("studies", _NAME, in_clause("status", _AFTER), in_clause("status", _BEFORE))
