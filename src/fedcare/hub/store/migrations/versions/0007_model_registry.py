"""The model registry: one immutable row per released global model.

An UPDATE or DELETE of a row is refused by the database itself (a trigger on SQLite and on
PostgreSQL), not only by the repository, which has no method for either.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MESSAGE = "model registry entries are immutable"


def upgrade() -> None:
    op.create_table(
        "model_registry",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("study_id", sa.String(64), nullable=True),
        sa.Column("study_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("entry", sa.JSON().with_variant(
            sa.dialects.postgresql.JSONB(), "postgresql"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_registry")),
    )
    op.create_index(op.f("ix_model_registry_study_id"), "model_registry", ["study_id"])
    if op.get_bind().dialect.name == "sqlite":
        for what in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER model_registry_no_{what.lower()} BEFORE {what} ON "
                       f"model_registry BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END")
    else:
        op.execute("CREATE FUNCTION model_registry_immutable() RETURNS trigger AS $$ BEGIN "
                   f"RAISE EXCEPTION '{MESSAGE}'; END $$ LANGUAGE plpgsql")
        op.execute("CREATE TRIGGER model_registry_immutable BEFORE UPDATE OR DELETE ON "
                   "model_registry FOR EACH ROW EXECUTE FUNCTION model_registry_immutable()")


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.execute("DROP TRIGGER model_registry_immutable ON model_registry")
        op.execute("DROP FUNCTION model_registry_immutable()")
    op.drop_index(op.f("ix_model_registry_study_id"), table_name="model_registry")
    op.drop_table("model_registry")
