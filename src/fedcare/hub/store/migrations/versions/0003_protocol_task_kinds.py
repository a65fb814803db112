"""Allow secure-aggregation and homomorphic-encryption protocol steps as task kinds.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KINDS = ("fit", "evaluate", "stats", "sa_share", "sa_mask", "sa_unmask", "he_decrypt")


def upgrade() -> None:
    # batch mode: SQLite cannot alter a CHECK constraint in place, so the table is rebuilt.
    with op.batch_alter_table("tasks") as batch:
        batch.drop_constraint(op.f("ck_tasks_task_kind"), type_="check")
        batch.create_check_constraint("task_kind", "kind IN ({})".format(
            ", ".join(f"'{k}'" for k in _KINDS)))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_constraint(op.f("ck_tasks_task_kind"), type_="check")
        batch.create_check_constraint("task_kind", "kind IN ('fit', 'evaluate', 'stats')")
