"""Keep the privacy-ledger head each site last reported (the anchor of its ledger).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ledger_heads",
        sa.Column("site", sa.String(128), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("count >= 0", name=op.f("ck_ledger_heads_count_nonneg")),
        sa.PrimaryKeyConstraint("site", name=op.f("pk_ledger_heads")),
    )


def downgrade() -> None:
    op.drop_table("ledger_heads")
