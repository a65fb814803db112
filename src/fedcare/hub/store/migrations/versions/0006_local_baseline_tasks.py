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

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NAME = "ck_tasks_task_kind"
_BEFORE = ("fit", "evaluate", "stats", "sa_share", "sa_mask", "sa_unmask", "he_decrypt")
_AFTER = (*_BEFORE, "local_baseline")


def _check(values: tuple[str, ...]) -> str:
    return "kind IN ({})".format(", ".join(f"'{v}'" for v in values))


def _sqlite_swap_check(old: str, new: str) -> None:
    conn = op.get_bind()
    sql = conn.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'tasks'").scalar()
    clause = f"CONSTRAINT {_NAME} CHECK ({old})"
    if not isinstance(sql, str) or sql.count(clause) != 1:
        raise RuntimeError(f"unexpected definition of table tasks (no {clause!r}): {sql!r}")
    version = int(conn.exec_driver_sql("PRAGMA schema_version").scalar())  # type: ignore[arg-type]
    conn.exec_driver_sql("PRAGMA writable_schema = ON")
    try:
        conn.exec_driver_sql(
            "UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'tasks'",
            (sql.replace(clause, f"CONSTRAINT {_NAME} CHECK ({new})"),))
        conn.exec_driver_sql(f"PRAGMA schema_version = {version + 1}")
    finally:
        conn.exec_driver_sql("PRAGMA writable_schema = OFF")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _sqlite_swap_check(_check(_BEFORE), _check(_AFTER))
        return
    op.drop_constraint(op.f(_NAME), "tasks", type_="check")
    op.create_check_constraint(op.f(_NAME), "tasks", _check(_AFTER))


def downgrade() -> None:
    # A local-baseline task cannot be represented before this revision: it goes (with its
    # reply, ON DELETE CASCADE); the study's history keeps the baseline's metrics.
    op.execute(sa.text("DELETE FROM replies WHERE task_id IN "
                       "(SELECT id FROM tasks WHERE kind = 'local_baseline')"))
    op.execute(sa.text("DELETE FROM tasks WHERE kind = 'local_baseline'"))
    if op.get_bind().dialect.name == "sqlite":
        _sqlite_swap_check(_check(_AFTER), _check(_BEFORE))
        return
    op.drop_constraint(op.f(_NAME), "tasks", type_="check")
    op.create_check_constraint(op.f(_NAME), "tasks", _check(_BEFORE))
