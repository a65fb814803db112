"""The privacy-ledger head each site reported: the hub's half of the ledger's anchor.

A node reports its ledger's head (entry count, SHA-256 of the last line) with its hello and
every reply. The hub keeps the *longest* head per site and never lowers it: a site whose
ledger was cut at its end or deleted reports a shorter head, which the hub refuses to record
and answers with the one it holds, so the node finds out and refuses to charge its budget
(see :mod:`fedcare.node.ledger_anchor`). The hub cannot tell whether a longer head extends
the one it holds (it keeps no history of hashes); the node checks that, against the heads
the hub acknowledged.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from fedcare.hub.store._sql import insert_for
from fedcare.hub.store.models import LedgerHead, utcnow


@dataclass(frozen=True)
class HeadRecord:
    """What the hub holds for a site after a report, and why it kept it (``refused``: the
    reported head does not go beyond it - a cut, deleted or replaced ledger)."""

    count: int
    hash: str
    refused: bool = False

    def __str__(self) -> str:
        return f"{self.count}:{self.hash}"


class LedgerHeadRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, site: str) -> HeadRecord | None:
        row = self.session.get(LedgerHead, site)
        return None if row is None else HeadRecord(row.count, row.hash)

    def report(self, site: str, count: int, hash_: str) -> HeadRecord:
        """Record ``count:hash_`` for ``site`` if it is longer than the head held; return the
        head held afterwards. The same head again is a no-op; a shorter one, or another hash
        at the same count, is refused (``refused=True``) and the held head returned."""
        # Insert-if-absent first (two first reports cannot collide), then lock the row.
        self.session.execute(insert_for(self.session, LedgerHead).values(
            site=site, count=count, hash=hash_, updated_at=utcnow()
        ).on_conflict_do_nothing(index_elements=[LedgerHead.site]))
        row = self.session.execute(
            sa.select(LedgerHead).where(LedgerHead.site == site).with_for_update()
            .execution_options(populate_existing=True)
        ).scalar_one()
        if count > row.count:
            row.count, row.hash, row.updated_at = count, hash_, utcnow()
            self.session.flush()
            return HeadRecord(count, hash_)
        return HeadRecord(row.count, row.hash, refused=(count, hash_) != (row.count, row.hash))
