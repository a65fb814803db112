"""Export requests of the output airlock and the stewards' decisions on them, stored.

The rules (what a decision does, when a download is allowed) are
:mod:`fedcare.governance.airlock`'s; this repository only reads and writes rows. A decision is
inserted, never changed (its primary key is the request and the site: a second decision of a
site is refused by the database as well), and a refused or rejected request is never
updated again (migration 0009's triggers).
"""

from __future__ import annotations

import builtins
import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from fedcare.governance.airlock import Decision, ExportState, ExportStatus
from fedcare.hub.store.models import ExportDecision, ExportRequest, utcnow


class ExportRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def create(self, *, study_id: str, artifact: str, requester: str, reason: str,
               digest: str, size: int, checks: dict[str, Any], state: ExportState,
               ) -> ExportRequest:
        now = utcnow()
        row = ExportRequest(id=uuid.uuid4().hex[:16], study_id=study_id, artifact=artifact,
                            requester=requester, reason=reason, created_at=now,
                            digest=digest, size=size, checks=checks,
                            status=state.status.value, sites=list(state.sites),
                            quorum=state.quorum, updated_at=now)
        self.session.add(row)
        self.session.flush()
        return row

    def get(self, export_id: str, *, lock: bool = False) -> ExportRequest | None:
        if lock:
            q = sa.select(ExportRequest).where(ExportRequest.id == export_id).with_for_update()
            return self.session.scalars(q).first()
        return self.session.get(ExportRequest, export_id)

    def list(self, *, requester: str | None = None,
             study_ids: builtins.list[str] | None = None) -> builtins.list[ExportRequest]:
        q = sa.select(ExportRequest).order_by(ExportRequest.created_at, ExportRequest.id)
        if requester is not None:
            q = q.where(ExportRequest.requester == requester)
        if study_ids is not None:
            q = q.where(ExportRequest.study_id.in_(study_ids))
        return builtins.list(self.session.scalars(q))

    def decisions(self, export_id: str) -> builtins.list[ExportDecision]:
        q = (sa.select(ExportDecision).where(ExportDecision.export_id == export_id)
             .order_by(ExportDecision.decided_at, ExportDecision.site))
        return builtins.list(self.session.scalars(q))

    def state(self, row: ExportRequest) -> ExportState:
        """The request as :mod:`fedcare.governance.airlock` sees it."""
        return ExportState(ExportStatus(row.status), tuple(row.sites), row.quorum,
                           tuple(Decision(d.site, d.user, d.approve, d.reason, d.decided_at)
                                 for d in self.decisions(row.id)))

    def record_decision(self, row: ExportRequest, decision: Decision,
                        status: ExportStatus) -> None:
        """Insert ``decision`` and move the request to ``status`` (computed by
        :func:`fedcare.governance.airlock.decide`), in the caller's transaction."""
        self.session.add(ExportDecision(export_id=row.id, site=decision.site,
                                        user=decision.user, approve=decision.approve,
                                        reason=decision.reason, decided_at=decision.at))
        self.set_status(row, status, decision.at)

    def set_status(self, row: ExportRequest, status: ExportStatus,
                   at: datetime | None = None) -> None:
        if row.status != status.value:
            row.status = status.value
            row.updated_at = at or utcnow()
        self.session.flush()
