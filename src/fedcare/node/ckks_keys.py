"""A node's CKKS study keys, exchanged with the study's other sites through the hub's relay.

The study's first site makes the key and seals it to every other site's certificate; the hub
only relays sealed blobs (``/v1/node/keys/{study}/...``). Each site keeps its study's secret
context in its own state folder (owner-only), so a restarted node decrypts what it encrypted
before. The scheme and what it protects against are in :mod:`fedcare.engine.ckks_custody`.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedcare.core.errors import FedcareError, ProtocolError
from fedcare.engine.ckks_custody import SiteIdentity, generator, open_secret, seal_secret
from fedcare.privacy.he.context import HEContext

log = logging.getLogger("fedcare.node")
SECRET_FILE = "ckks_secret.ctx"


class RelayKeys:
    """One study's CKKS key at one site (:class:`~fedcare.engine.ckks_custody.StudyKeys`).

    ``request`` is the node's hub call (``HubLink.request``); ``folder`` the study's state
    folder. The maker (the study's first site) creates the key on first use and seals it to
    every site whose certificate the hub has seen, again on each later use for sites that
    joined since; any other site waits up to ``wait`` seconds for its sealed copy.
    """

    def __init__(self, request: Callable[..., Any], identity: SiteIdentity, sites: list[str],
                 folder: Path, *, wait: float = 60.0, poll: float = 0.5) -> None:
        self.request = request
        self.identity = identity
        self.maker = generator(sites)
        self.folder = folder
        self.wait = wait
        self.poll = poll
        self._secret: bytes | None = None
        self._ctx: HEContext | None = None

    @property
    def is_maker(self) -> bool:
        return self.identity.site == self.maker

    def context(self, study: str) -> HEContext:
        if self._ctx is None:
            from fedcare.pki.files import write_private_key

            path = self.folder / SECRET_FILE
            if path.is_file():
                secret = path.read_bytes()
            else:
                secret = (HEContext.create().secret_bytes() if self.is_maker
                          else self._fetch(study))
                self.folder.mkdir(parents=True, exist_ok=True)
                write_private_key(path, secret)
            self._ctx, self._secret = HEContext.load_secret(secret), secret
        if self.is_maker:
            self._distribute(study)
        return self._ctx

    def _distribute(self, study: str) -> None:
        """Seal the key for every site of the study that has none yet (best effort: a site
        left out now is served on the next use)."""
        assert self._secret is not None
        try:
            r = self.request("GET", f"/v1/node/keys/{study}/certs")
            if r.status_code != 200:
                raise FedcareError(f"hub answered {r.status_code}: {r.content[:200]!r}")
            for site, info in sorted(r.json().items()):
                if site == self.identity.site or info.get("sealed"):
                    continue
                try:
                    blob = seal_secret(self.identity, site, base64.b64decode(info["cert"]),
                                       study, self._secret)
                except (FedcareError, KeyError, ValueError) as exc:
                    log.error("not sending study %s's CKKS key to site %s: %s", study, site, exc)
                    continue
                put = self.request("PUT", f"/v1/node/keys/{study}/sealed/{site}", content=blob,
                                   headers={"Content-Type": "application/octet-stream"})
                if put.status_code >= 400:
                    log.error("hub refused study %s's sealed key for %s (%s)", study, site,
                              put.status_code)
        except Exception as exc:  # noqa: BLE001 - the relay is best effort; the round goes on
            log.warning("could not hand out study %s's CKKS key yet: %s", study, exc)

    def _fetch(self, study: str) -> bytes:
        from fedcare.node.hub_link import LinkError

        deadline = time.monotonic() + self.wait
        while True:
            try:
                r = self.request("GET", f"/v1/node/keys/{study}/sealed")
            except LinkError as exc:
                raise ProtocolError(f"cannot fetch study {study}'s CKKS key: {exc}") from exc
            if r.status_code == 200:
                return open_secret(self.identity, r.content, study, self.maker)
            if r.status_code != 404 or time.monotonic() > deadline:
                raise ProtocolError(f"study {study}'s CKKS key has not reached site "
                                    f"{self.identity.site} (hub answered {r.status_code}); "
                                    f"site {self.maker} makes it and must be online")
            time.sleep(self.poll)
