"""Widen or narrow a CHECK constraint of the hub's tables in a migration, without losing rows.

SQLite cannot alter a CHECK constraint, and the usual way round it (alembic's batch mode: copy
the table, DROP the old one, rename the copy) loses data here: the hub runs with
``PRAGMA foreign_keys = ON``, which cannot be turned off inside the migration's transaction,
and dropping a table then deletes every row that references it (ON DELETE CASCADE). So on
SQLite the table's stored definition is edited instead, the procedure SQLite documents for
changing a CHECK constraint ("Making other kinds of table schema changes",
https://sqlite.org/lang_altertable.html): no row is copied or deleted. PostgreSQL alters the
constraint in place. Written by hand: alembic offers only the batch-mode copy.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op


def in_clause(column: str, values: Sequence[str]) -> str:
    """``column IN ('a', 'b')`` (the constraints' own spelling)."""
    return "{} IN ({})".format(column, ", ".join(f"'{v}'" for v in values))


def swap_check(table: str, name: str, old: str, new: str) -> None:
    """Replace the CHECK constraint ``name`` of ``table`` (``old``) by ``new``."""
    conn = op.get_bind()
    if conn.dialect.name != "sqlite":
        op.drop_constraint(op.f(name), table, type_="check")
        op.create_check_constraint(op.f(name), table, new)
        return
    sql = conn.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).scalar()
    clause = f"CONSTRAINT {name} CHECK ({old})"
    if not isinstance(sql, str) or sql.count(clause) != 1:
        raise RuntimeError(f"unexpected definition of table {table} (no {clause!r}): {sql!r}")
    version = int(conn.exec_driver_sql("PRAGMA schema_version").scalar())  # type: ignore[arg-type]
    conn.exec_driver_sql("PRAGMA writable_schema = ON")
    try:
        conn.exec_driver_sql(
            "UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = ?",
            (sql.replace(clause, f"CONSTRAINT {name} CHECK ({new})"), table))
        conn.exec_driver_sql(f"PRAGMA schema_version = {version + 1}")
    finally:
        conn.exec_driver_sql("PRAGMA writable_schema = OFF")
