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

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NAME = "ck_studies_study_status"
_BEFORE = ("pending", "running", "completed", "failed", "cancelled")
_AFTER = (*_BEFORE, "paused")


def _check(values: tuple[str, ...]) -> str:
    return "status IN ({})".format(", ".join(f"'{v}'" for v in values))


def _sqlite_swap_check(old: str, new: str) -> None:
    conn = op.get_bind()
    sql = conn.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'studies'").scalar()
    clause = f"CONSTRAINT {_NAME} CHECK ({old})"
    if not isinstance(sql, str) or sql.count(clause) != 1:
        raise RuntimeError(f"unexpected definition of table studies (no {clause!r}): {sql!r}")
    version = int(conn.exec_driver_sql("PRAGMA schema_version").scalar())  # type: ignore[arg-type]
    conn.exec_driver_sql("PRAGMA writable_schema = ON")
    try:
        conn.exec_driver_sql(
            "UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'studies'",
            (sql.replace(clause, f"CONSTRAINT {_NAME} CHECK ({new})"),))
        conn.exec_driver_sql(f"PRAGMA schema_version = {version + 1}")
    finally:
        conn.exec_driver_sql("PRAGMA writable_schema = OFF")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _sqlite_swap_check(_check(_BEFORE), _check(_AFTER))
        return
    op.drop_constraint(op.f(_NAME), "studies", type_="check")
    op.create_check_constraint(op.f(_NAME), "studies", _check(_AFTER))


def downgrade() -> None:
    # A paused study cannot be represented before this revision: it becomes failed (its
    # reason stays in ``error``; a newer hub can still resume it).
    op.execute(sa.text("UPDATE studies SET status = 'failed' WHERE status = 'paused'"))
    if op.get_bind().dialect.name == "sqlite":
        _sqlite_swap_check(_check(_AFTER), _check(_BEFORE))
        return
    op.drop_constraint(op.f(_NAME), "studies", type_="check")
    op.create_check_constraint(op.f(_NAME), "studies", _check(_BEFORE))
