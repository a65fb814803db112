"""The hub's relay for CKKS study keys: opaque sealed blobs between the sites of a study.

The hub never holds a CKKS secret (security audit F10): a study's first site makes the key and
seals a copy to each other site's certificate key (:mod:`fedcare.engine.ckks_custody`). The hub
only stores what it cannot read:

* each site's certificate, as presented on its TLS connection at ``hello`` (public; the
  sealing site checks it chains to the federation CA before it encrypts to it);
* per study and recipient, the sealed blob the study's first site uploaded: written once (a
  second, different upload is refused, so nobody can swap a site's key later), read only by
  that recipient.

Files live under the hub's state folder (``keyrelay/``), so a restarted hub still relays. The
API (``/v1/node/keys/...`` in :mod:`fedcare.hub.api`) checks that the caller is a site of the
study before it calls anything here.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

from fedcare.core.errors import ProtocolError, ValidationError
from fedcare.core.files import PRIVATE_FILE_MODE, atomic_write
from fedcare.engine.ckks_custody import generator

#: A sealed CKKS secret context is ~1.6 MB at the default parameters.
MAX_SEALED_BYTES = 64 * 1024 * 1024
_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


class KeyRelayNotFound(LookupError):
    """Nothing sealed for this site yet (its study's first site has not sent it)."""


class KeyRelay:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        # Owner-only like the rest of the hub's state (audit F22): mkdir's mode applies to the
        # last folder only, so each level is made (and tightened) on its own.
        for level in (self.folder, self.folder / "certs"):
            level.mkdir(exist_ok=True, mode=0o700)
            level.chmod(0o700)

    @staticmethod
    def _check(*names: str) -> None:
        for name in names:
            if not _ID.match(name) or name.startswith("."):
                raise ValidationError(f"invalid study or site name {name!r}")

    def remember_certificate(self, site: str, cert_der: bytes) -> None:
        """Keep the certificate ``site`` authenticated with (already verified by the hub)."""
        self._check(site)
        path = self.folder / "certs" / f"{site}.der"
        if not path.is_file() or path.read_bytes() != cert_der:
            atomic_write(path, cert_der, mode=PRIVATE_FILE_MODE)

    def certificates(self, study_id: str, sites: list[str]) -> dict[str, dict[str, object]]:
        """For the study's sites the hub has seen: certificate (base64 DER) and whether a
        sealed key already waits for it."""
        self._check(study_id, *sites)
        out: dict[str, dict[str, object]] = {}
        for site in sites:
            cert = self.folder / "certs" / f"{site}.der"
            if cert.is_file():
                out[site] = {"cert": base64.b64encode(cert.read_bytes()).decode(),
                             "sealed": self._sealed_path(study_id, site).is_file()}
        return out

    def _sealed_path(self, study_id: str, site: str) -> Path:
        return self.folder / "studies" / study_id / f"{site}.sealed"

    def put_sealed(self, study_id: str, sites: list[str], sender: str, recipient: str,
                   blob: bytes) -> None:
        """Store ``blob`` for ``recipient``: only the study's key maker may send, only to
        another site of the study, once."""
        self._check(study_id, sender, recipient)
        maker = generator(sites)
        if sender != maker:
            raise ProtocolError(f"only site {maker}, the first of the study's sites, hands out "
                                "its CKKS key")
        if recipient not in sites or recipient == sender:
            raise ValidationError(f"{recipient!r} is not another site of study {study_id}")
        if not blob or len(blob) > MAX_SEALED_BYTES:
            raise ValidationError(f"a sealed key must be 1 to {MAX_SEALED_BYTES} bytes")
        path = self._sealed_path(study_id, recipient)
        if path.is_file():
            if path.read_bytes() == blob:
                return
            raise ProtocolError(f"site {recipient} already has study {study_id}'s sealed key; "
                                "it is sent once and never replaced")
        for level in (path.parent.parent, path.parent):
            level.mkdir(exist_ok=True, mode=0o700)
            level.chmod(0o700)
        atomic_write(path, blob, mode=PRIVATE_FILE_MODE)

    def get_sealed(self, study_id: str, site: str) -> bytes:
        self._check(study_id, site)
        path = self._sealed_path(study_id, site)
        if not path.is_file():
            raise KeyRelayNotFound(f"no CKKS key sealed for site {site} in study {study_id} yet")
        return path.read_bytes()
