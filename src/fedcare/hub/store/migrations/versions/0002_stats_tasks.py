"""Allow ``stats`` tasks (federated feature statistics before round 1).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch mode: SQLite cannot alter a CHECK constraint in place, so the table is rebuilt.
    with op.batch_alter_table("tasks") as batch:
        batch.drop_constraint(op.f("ck_tasks_task_kind"), type_="check")
        batch.create_check_constraint("task_kind", "kind IN ('fit', 'evaluate', 'stats')")


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_constraint(op.f("ck_tasks_task_kind"), type_="check")
        batch.create_check_constraint("task_kind", "kind IN ('fit', 'evaluate')")
