"""The node's half of the privacy ledger's anchor at the hub.

A site's ledger (:mod:`fedcare.privacy.dp.ledger`) is hash-chained and signed, which finds an
edited or rewritten entry, but a ledger cut at its end - or deleted - is still a valid, shorter
ledger, and a shorter ledger is a smaller spent budget. So the node reports its ledger's head
(entry count and last line's hash) to the hub with its hello and every reply, in the
``X-Fedcare-Ledger-Head`` header; the hub keeps the longest head it acknowledged for the site
and answers with it. The node keeps the acknowledged head beside the ledger
(:data:`ANCHOR_FILE`) and hands it to the ledger, which then refuses to charge while it does
not extend that head (checked before every charge; the hub's answer to the node's hello is
checked at start).

Trust: the hub learns how many tasks the site charged and nothing about them; a hub that lies
about the head can only make the site refuse work (fail closed), never spend more.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

from fedcare import __version__
from fedcare.core.errors import FedcareError, ValidationError
from fedcare.core.files import PRIVATE_FILE_MODE, atomic_write
from fedcare.privacy.dp.errors import LedgerError
from fedcare.privacy.dp.ledger import LEDGER_HEAD_HEADER, LedgerHead, LedgerKey, PrivacyLedger

log = logging.getLogger("fedcare.node")

#: The last ledger head the hub acknowledged, in the node's state folder.
ANCHOR_FILE = "privacy-ledger.anchor.json"
#: The hub's endpoint that tells a site (by its certificate) the head it anchored.
HEAD_PATH = "/v1/node/ledger-head"


class LedgerAnchor:
    """The ledger heads the hub acknowledged, kept at ``path`` and set as the ledger's
    :attr:`~fedcare.privacy.dp.ledger.PrivacyLedger.anchor`."""

    def __init__(self, ledger: PrivacyLedger, path: Path) -> None:
        self.ledger = ledger
        self.path = Path(path)
        ledger.anchor = self._load()

    def _load(self) -> LedgerHead | None:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            return LedgerHead.parse(doc["head"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, ValidationError) as exc:
            raise LedgerError(f"cannot read the privacy ledger's anchor {self.path} ({exc}); it "
                              "holds the last ledger head the hub acknowledged. Restore it, or "
                              "remove it: the node then takes the anchor from the hub when it "
                              "connects") from exc

    def headers(self) -> dict[str, str]:
        """The header that reports the ledger's head (none while the file itself is damaged:
        a damaged ledger is never anchored)."""
        head = self.ledger.verified_head()
        return {} if head is None else {LEDGER_HEAD_HEADER: str(head)}

    def acknowledged(self, value: object) -> None:
        """Take the head the hub acknowledged (from its hello answer or a reply receipt).

        Only a longer head replaces the one held, and only while the ledger extends the one
        held: a hub that lost its database (or answers an older head) never lowers the
        anchor, and a ledger already found cut or rewritten stays found out."""
        if value is None:  # the hub has no head for this site yet (or predates anchoring)
            return
        try:
            head = LedgerHead.parse(value)
        except ValidationError as exc:
            raise FedcareError(f"the hub acknowledged an invalid ledger head: {exc}") from exc
        held = self.ledger.anchor
        if held is not None and head.count <= held.count:
            if head != held:
                log.warning("the hub acknowledges ledger head %s, not the %s it acknowledged "
                            "before (was its database reset?); keeping %s", head, held, held)
            return
        if held is not None and self.ledger.verify() != []:
            return  # already refused: the steward must look at the ledger first
        atomic_write(self.path, json.dumps({
            "head": str(head), "acknowledged_at": dt.datetime.now(dt.UTC).isoformat(),
            "fedcare": __version__}).encode(), mode=PRIVATE_FILE_MODE)
        self.ledger.anchor = head

    def problems(self) -> list[str]:
        """What :meth:`PrivacyLedger.verify` finds, against the anchor held."""
        return self.ledger.verify()


def hub_head(kit_dir: Path, *, timeout: float = 10.0) -> LedgerHead | None:
    """The ledger head the hub anchored for the site whose startup kit is ``kit_dir`` (None:
    the hub holds none). Raises :class:`~fedcare.node.hub_link.LinkError` when the hub cannot
    be reached and :class:`FedcareError` when it refuses."""
    from fedcare.node.hub_link import HubLink
    from fedcare.pki.trust import client_ssl_context, load_node_config

    kit = load_node_config(kit_dir)
    link = HubLink(kit.hub_url, client_ssl_context(kit_dir), connect_timeout=timeout,
                   read_timeout=timeout, user_agent=f"fedcare-node/{__version__}")
    try:
        r = link.request("GET", HEAD_PATH)
    finally:
        link.close()
    if r.status_code != 200:
        raise FedcareError(f"the hub answered {r.status_code} to {HEAD_PATH}: {r.text[:300]}")
    try:
        value = r.json().get("ledger_head")
        return None if value is None else LedgerHead.parse(value)
    except (ValueError, AttributeError, ValidationError) as exc:
        raise FedcareError(f"the hub's answer to {HEAD_PATH} is not a ledger head: "
                           f"{exc}") from exc


def ledger_key(kit_dir: Path, *, signing: bool = True) -> LedgerKey:
    """The site's ledger key from its startup kit: ``site.crt`` (and ``site.key`` to sign)."""
    from fedcare.pki.trust import load_node_config

    tls = load_node_config(kit_dir).tls
    return LedgerKey.from_files(tls.cert, tls.key if signing else None)
