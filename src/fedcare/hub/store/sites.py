"""Sites as the hub last saw them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from fedcare.core.errors import ValidationError
from fedcare.hub.store._sql import insert_for
from fedcare.hub.store.models import Site, utcnow


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset a site registered: its name and row count (never its content)."""

    name: str
    rows: int
    contract_hash: str | None = None
    quality: dict[str, Any] | None = None
    #: SHA-256 of the site's dataset as the node read it (see the node's ``_describe``): which
    #: version of the data a released model was trained on, for the model registry.
    digest: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValidationError(f"dataset name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.rows, int) or isinstance(self.rows, bool) or self.rows < 0:
            raise ValidationError(f"dataset {self.name!r}: rows must be an int >= 0")


class SiteRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def upsert_seen(
        self, name: str, serial: str, version: str, datasets: Iterable[DatasetInfo]
    ) -> Site:
        """Record that ``name`` called in now (first_seen is kept; everything else refreshed).

        One ``INSERT … ON CONFLICT DO UPDATE``, so two concurrent first calls cannot collide.
        """
        now = utcnow()
        listed = [{"name": d.name, "rows": d.rows,
                   **({"contract_hash": d.contract_hash} if d.contract_hash else {}),
                   **({"digest": d.digest} if d.digest else {}),
                   **({"quality": d.quality} if d.quality is not None else {})}
                  for d in datasets]
        fresh = {"cert_serial": serial.lower(), "last_seen": now, "version": version,
                 "datasets": listed}
        stmt = insert_for(self.session, Site).values(name=name, first_seen=now, **fresh)
        stmt = stmt.on_conflict_do_update(index_elements=[Site.name], set_=fresh)
        self.session.execute(stmt)
        return self.session.execute(
            sa.select(Site).where(Site.name == name).execution_options(populate_existing=True)
        ).scalar_one()

    def get(self, name: str) -> Site | None:
        return self.session.get(Site, name)

    def list(self) -> list[Site]:
        return list(self.session.scalars(sa.select(Site).order_by(Site.name)))
