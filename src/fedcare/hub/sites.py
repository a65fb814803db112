"""The sites a hub knows: their hellos, their certificate serials, and who is revoked."""

from __future__ import annotations

from typing import Any, Protocol

from fedcare.hub.state import HubState
from fedcare.hub.store import DatasetInfo, SiteRepo


class RevocationCheck(Protocol):
    """Tells whether a site certificate (by serial, hex as the site table stores it) has been
    revoked. A required argument of :class:`~fedcare.hub.service.HubService`, so no embedding
    can end up with a hub that never checks revocation; the server passes the federation's
    CRL (:class:`fedcare.hub.api.PeerTrust`)."""

    def is_revoked(self, serial_hex: str) -> bool: ...


class NeverRevoked:
    """A :class:`RevocationCheck` for tests and tools without a federation CRL: nothing is
    revoked. Only ever passed explicitly."""

    def is_revoked(self, serial_hex: str) -> bool:
        return False


class SiteDirectory:
    """Site hellos and the certificate serials they connected with (cached: asked once per
    task), and whether a site's certificate is revoked."""

    def __init__(self, state: HubState, revocation: RevocationCheck) -> None:
        self.state = state
        self._revocation = revocation
        self._serials: dict[str, str] = {}

    def hello(self, site: str, serial: str, version: str, datasets: list[dict[str, Any]],
              session: str) -> None:
        infos = [DatasetInfo(str(d["name"]), int(d["rows"]), d.get("contract_hash"),
                             d.get("quality"), d.get("digest")) for d in datasets]
        with self.state.db.session() as s:
            known = SiteRepo(s).get(site)
            before = None if known is None else known.cert_serial
            SiteRepo(s).upsert_seen(site, serial, version, infos)
        if before is None or before.lower() != serial.lower():  # first hello, or a new cert
            self.state.audit.site_enrolled(site, serial, before)
        self._serials[site] = serial.lower()
        self.state.event("node", f"site {site} connected (version {version}, session "
                                 f"{session[:8]})", site=site)

    def is_revoked(self, serial_hex: str) -> bool:
        """Whether the certificate with this serial is revoked (see :class:`RevocationCheck`)."""
        return self._revocation.is_revoked(serial_hex)

    def site_serial(self, site: str) -> str | None:
        """The certificate serial a site last connected with (cached: asked once per task)."""
        serial = self._serials.get(site)
        if serial is None:
            with self.state.db.session() as s:
                known = SiteRepo(s).get(site)
                serial = None if known is None else known.cert_serial
            if serial is not None:
                self._serials[site] = serial
        return serial

    def revoked(self, site: str) -> bool:
        """Whether ``site``'s certificate (the one it last connected with) is revoked."""
        serial = self.site_serial(site)
        return serial is not None and self.is_revoked(serial)
