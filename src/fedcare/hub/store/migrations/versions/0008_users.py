"""People at the hub: a users table (role, steward's site, token id and argon2 hash), and
each study's owner (the user who submitted it; NULL for studies from before users).

Adding a nullable column is a plain ``ALTER TABLE ... ADD COLUMN`` on SQLite and PostgreSQL:
no table is rebuilt (``studies`` has foreign keys pointing at it).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("site", sa.String(128), nullable=True),
        sa.Column("token_id", sa.String(32), nullable=False),
        sa.Column("token_hash", sa.String(256), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_users")),
        sa.UniqueConstraint("token_id", name=op.f("uq_users_token_id")),
    )
    op.add_column("studies", sa.Column("owner", sa.String(128), nullable=True))


def downgrade() -> None:
    op.drop_column("studies", "owner")
    op.drop_table("users")
