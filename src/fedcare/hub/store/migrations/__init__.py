"""Alembic migrations of the hub database; run them with :func:`fedcare.hub.store.upgrade`."""
