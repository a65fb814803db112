"""The hub's operations log.

Log a *rejected* request (a duplicate or late reply, say) in a transaction of its own, or in
the same one after catching the error: a session that leaves its block by an exception rolls
back, and the log entry with it.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from fedcare.hub.store.models import Event, utcnow


class EventRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def log(
        self, kind: str, message: str, *, study_id: str | None = None, site: str | None = None
    ) -> Event:
        event = Event(at=utcnow(), kind=kind, message=message, study_id=study_id, site=site)
        self.session.add(event)
        self.session.flush()
        return event

    def recent(
        self,
        limit: int = 100,
        *,
        study_id: str | None = None,
        site: str | None = None,
        kind: str | None = None,
    ) -> list[Event]:
        """The newest ``limit`` events, newest first, optionally filtered."""
        query = sa.select(Event).order_by(Event.id.desc()).limit(limit)
        if study_id is not None:
            query = query.where(Event.study_id == study_id)
        if site is not None:
            query = query.where(Event.site == site)
        if kind is not None:
            query = query.where(Event.kind == kind)
        return list(self.session.scalars(query))
