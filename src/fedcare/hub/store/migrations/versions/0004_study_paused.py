"""Allow the ``paused`` study status (a study stopped by a storage error, resumable).

Revision ID: 0004
Revises: 0003

SQLite cannot alter a CHECK constraint, and the usual way round it (alembic's batch mode:
copy the table, DROP the old one, rename the copy) loses data here: the hub runs with
``PRAGMA foreign_keys = ON``, which cannot be turned off inside the migration's transaction,
and dropping ``studies`` then deletes every row of ``rounds`` and ``tasks`` (ON DELETE
CASCADE). Adding a value to the constraint only widens it, so this revision edits the table's
stored definition instead, the procedure SQLite documents for changing a CHECK constraint
("Making other kinds of table schema changes", https://sqlite.org/lang_altertable.html):
no row is copied or deleted. PostgreSQL alters the constraint in place.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from fedcare.hub.store.migrations.check_constraints import in_clause, swap_check

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NAME = "ck_studies_study_status"
_BEFORE = ("pending", "running", "completed", "failed", "cancelled")
_AFTER = (*_BEFORE, "paused")


def upgrade() -> None:
    swap_check("studies", _NAME, in_clause("status", _BEFORE), in_clause("status", _AFTER))


def downgrade() -> None:
    # A paused study cannot be represented before this revision: it becomes failed (its
    # reason stays in ``error``; a newer hub can still resume it).
    op.execute(sa.text("UPDATE studies SET status = 'failed' WHERE status = 'paused'"))
    swap_check("studies", _NAME, in_clause("status", _AFTER), in_clause("status", _BEFORE))
