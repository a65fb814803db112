"""Alembic environment for the hub database.

Used two ways: programmatically by :func:`fedcare.hub.store.upgrade`, which hands over an open
connection in ``config.attributes["connection"]``; or by the ``alembic`` command (for writing a
new revision) with ``-x url=...`` or ``sqlalchemy.url`` set. SQLite needs "batch" mode to alter
tables, so it is always on.
"""

from __future__ import annotations

from alembic import context

from fedcare.hub.store.database import create_hub_engine
from fedcare.hub.store.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit("give the database: alembic -x url=sqlite:///path/hub.db ...")
    engine = create_hub_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
