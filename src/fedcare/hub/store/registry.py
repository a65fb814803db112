"""The hub's model registry: released models, added and read, never changed.

The repository has no update or delete; the database refuses both too (triggers of
migration 0007), so no code path - an API route, a script on the hub's database - can alter
a released entry. Adding an id that exists already is refused as well.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from fedcare.hub.store.errors import StoreError
from fedcare.hub.store.models import ModelEntry


class EntryExists(StoreError):
    """A registry entry with this id exists already (entries are never replaced)."""


class ModelRegistryRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, entry: dict[str, Any]) -> ModelEntry:
        """Store a released entry (a ``RegistryEntry`` dumped to JSON)."""
        if self.session.get(ModelEntry, entry["id"]) is not None:
            raise EntryExists(f"registry entry {entry['id']} exists already; entries are "
                              "immutable")
        row = ModelEntry(id=entry["id"], study_id=entry.get("study_id"),
                         study_hash=entry["study_hash"],
                         created_at=dt.datetime.fromisoformat(entry["created"]), entry=entry)
        self.session.add(row)
        self.session.flush()
        return row

    def get(self, entry_id: str) -> ModelEntry | None:
        return self.session.get(ModelEntry, entry_id)

    def list(self, study_id: str | None = None) -> list[ModelEntry]:
        q = sa.select(ModelEntry).order_by(ModelEntry.created_at, ModelEntry.id)
        if study_id is not None:
            q = q.where(ModelEntry.study_id == study_id)
        return list(self.session.scalars(q))
