"""Allow the ``local_baseline`` task kind (a site trains the study's model alone and reports
its held-out metrics).

Revision ID: 0006
Revises: 0005

As in 0004, SQLite's CHECK constraint is widened by editing the table's stored definition
(https://sqlite.org/lang_altertable.html, "Making other kinds of table schema changes"):
rebuilding ``tasks`` in alembic's batch mode would drop it, and with ``PRAGMA foreign_keys =
ON`` that deletes every row of ``replies`` (ON DELETE CASCADE). PostgreSQL alters the
constraint in place.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from fedcare.hub.store.migrations.check_constraints import in_clause, swap_check

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NAME = "ck_tasks_task_kind"
_BEFORE = ("fit", "evaluate", "stats", "sa_share", "sa_mask", "sa_unmask", "he_decrypt")
_AFTER = (*_BEFORE, "local_baseline")


def upgrade() -> None:
    swap_check("tasks", _NAME, in_clause("kind", _BEFORE), in_clause("kind", _AFTER))


def downgrade() -> None:
    # A local-baseline task cannot be represented before this revision: it goes (with its
    # reply, ON DELETE CASCADE); the study's history keeps the baseline's metrics.
    op.execute(sa.text("DELETE FROM replies WHERE task_id IN "
                       "(SELECT id FROM tasks WHERE kind = 'local_baseline')"))
    op.execute(sa.text("DELETE FROM tasks WHERE kind = 'local_baseline'"))
    swap_check("tasks", _NAME, in_clause("kind", _AFTER), in_clause("kind", _BEFORE))
