"""What each site decided about each study (migration 0010): one row per (study, site), the
site's latest decision; the audit trail keeps every one."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from fedcare.governance.approvals import Decision
from fedcare.hub.store.models import SiteDecision, utcnow


class DecisionRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def record(self, study_id: str, site: str, decision: Decision, content_hash: str,
               reason: str | None) -> SiteDecision:
        """Record ``site``'s latest decision on ``study_id`` (replacing an earlier one)."""
        row = self.session.get(SiteDecision, (study_id, site), populate_existing=True)
        if row is None:
            row = SiteDecision(study_id=study_id, site=site)
            self.session.add(row)
        row.decision, row.content_hash = decision.value, content_hash
        row.reason, row.decided_at = reason, utcnow()
        self.session.flush()
        return row

    def for_study(self, study_id: str) -> dict[str, tuple[Decision, str | None, datetime]]:
        """``{site: (decision, reason, when)}``."""
        rows = self.session.scalars(sa.select(SiteDecision)
                                    .where(SiteDecision.study_id == study_id)
                                    .order_by(SiteDecision.site))
        return {r.site: (Decision(r.decision), r.reason, r.decided_at) for r in rows}

    def get(self, study_id: str, site: str) -> Decision | None:
        row = self.session.get(SiteDecision, (study_id, site))
        return None if row is None else Decision(row.decision)
