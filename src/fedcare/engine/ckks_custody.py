"""Who holds a CKKS study's secret key, and what a site checks before it decrypts (audit F10).

Before: one secret context was made at provisioning and copied into every site kit AND kept in
the coordinator's CA folder; a decrypting site decrypted whatever blob the hub called "the
sum", so a hub that deviated could have one site's own update decrypted by another.

Now, per study:

* **Key creation among the sites.** The study's first site (first in the study's site list,
  the same list every site receives) makes the TenSEAL context and keeps the secret in its
  own state folder. It sends each other site of the study the secret context *sealed* to that
  site's certificate key (:func:`seal_secret`: ECDH P-256 with a fresh ephemeral key, HKDF-
  SHA256, AES-256-GCM; the sealing site signs the sealed blob with its own site key). The hub
  relays the sealed blobs as opaque bytes (``/v1/node/keys/...``, :mod:`fedcare.hub.keyrelay`).
  The secret never exists at the coordinator or the hub. Before sealing, the sender checks
  that the recipient's certificate chains to the federation CA and names the recipient, so
  the hub cannot substitute a key of its own; the recipient checks that the sealed blob was
  signed by the study's first site under the same CA (:func:`open_secret`).
* **Signed contributions.** With its ciphertext each site sends an ECDSA signature (its site
  key) over the sha256 of the ciphertext bound to the study, the round and the site's name
  (:func:`contribution_message`), and its certificate.
* **Decrypt only a verified sum.** The ``he_decrypt`` task carries the individual signed
  ciphertexts, not a sum. The decrypting site verifies every certificate against the CA and
  every signature, requires at least the round's threshold of distinct included sites,
  adds the ciphertexts itself and decrypts only that sum (``engine.secure``).

What this proves, and what it cannot, under the documented honest-but-curious hub and with
sites that follow the protocol:

* The hub learns the sum of at least ``threshold`` sites' contributions of THIS study and
  round, never one site's update: a single ciphertext, a replay from another round or study,
  a ciphertext relabelled as another site's, or one the hub made itself is refused.
* The hub still chooses WHICH sites are included, down to the threshold, and the participant
  list the threshold is computed from (sampling makes a round's participants a subset of the
  study's sites; a site cannot tell a sampled-out site from one the hub chose to drop). With a
  threshold of t sites, two rounds whose included sets differ by one site would reveal that
  site's update by subtraction only if the hub could make both sums of the SAME round: each
  site decrypts once per round (its session ends), but another site could be asked to decrypt
  a different subset of the same round. That is a deviation from the protocol, which this
  scheme does not prevent; masking-based secure aggregation (``secagg``) does.
* Every site of the study holds the same secret, so a site can decrypt any other site's
  ciphertext it gets hold of: CKKS protects updates from the hub and the network, not from
  the other sites, and a site that colludes with the hub reveals everything. The study's
  first site creates the key and so is trusted not to keep a copy for the hub.
* A site revoked after it received the key keeps it for that study (a new study gets a new
  key); the relay does not check the CRL for the recipient's certificate beyond what the hub
  itself enforces (a revoked site cannot reach the hub).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedcare.core.errors import ConfigError, FedcareError, ProtocolError
from fedcare.core.framing import frame, unframe
from fedcare.privacy.he.context import HEContext

SEAL_MAGIC = b"FCHES1"
_MAX_SEAL_HEADER = 1 << 14
_CONTRIBUTION = b"fedcare-ckks-contribution\0"
_SEAL = b"fedcare-ckks-seal\0"


class StudyKeys(Protocol):
    """Where a site gets a study's CKKS secret context (made by it, or sealed to it)."""

    def context(self, study: str) -> HEContext:
        """The study's secret context; raises :class:`ProtocolError` if it is not here yet."""
        ...


def generator(sites: list[str] | tuple[str, ...]) -> str:
    """The site that makes a study's CKKS key: the first of the study's site list."""
    if not sites:
        raise ProtocolError("a CKKS study needs a site list to choose its key's maker")
    return sites[0]


# --------------------------------------------------------------------------- identities
@dataclass(frozen=True)
class SiteIdentity:
    """A site's signing key, its certificate and the federation CA it trusts."""

    site: str
    key: ec.EllipticCurvePrivateKey = field(repr=False)
    cert: x509.Certificate
    ca: x509.Certificate

    @classmethod
    def from_kit(cls, kit_dir: str | Path) -> SiteIdentity:
        """The identity in a site's startup kit (``site.key``, ``site.crt``, ``ca.crt``)."""
        from fedcare.pki.trust import load_node_config

        config = load_node_config(kit_dir)
        try:
            key = serialization.load_pem_private_key(config.tls.key.read_bytes(), None)
            cert = x509.load_pem_x509_certificate(config.tls.cert.read_bytes())
            ca = x509.load_pem_x509_certificate(config.tls.ca.read_bytes())
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"cannot read site {config.site}'s key and certificates from "
                              f"{kit_dir}: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != \
                cert.public_key():
            raise ConfigError(f"{config.tls.key} is not the key of {config.tls.cert}")
        return cls(config.site, key, cert, ca)

    def cert_der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    def sign(self, message: bytes) -> bytes:
        return self.key.sign(message, ec.ECDSA(hashes.SHA256()))

    def peer(self, cert_der: bytes, site: str, *, now: datetime | None = None
             ) -> x509.Certificate:
        """``cert_der`` if it is a current site certificate of this federation naming
        ``site``; else :class:`ProtocolError` saying why."""
        from fedcare.pki.errors import PeerCertificateError
        from fedcare.pki.trust import certificate_site

        try:
            cert = x509.load_der_x509_certificate(bytes(cert_der))
            cert.verify_directly_issued_by(self.ca)
            named = certificate_site(cert)
        except (ValueError, TypeError, InvalidSignature, PeerCertificateError) as exc:
            raise ProtocolError(f"the certificate given for site {site} is not a site "
                                f"certificate of this federation's CA: {exc}") from exc
        if named != site:
            raise ProtocolError(f"the certificate given for site {site} names site {named}")
        moment = now or datetime.now(UTC)
        if not cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc:
            raise ProtocolError(f"site {site}'s certificate is outside its validity period")
        return cert


def verify_signature(cert: x509.Certificate, message: bytes, signature: bytes,
                     what: str) -> None:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ProtocolError(f"{what}: the certificate's key is not an EC key")
    try:
        key.verify(bytes(signature), message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise ProtocolError(f"{what}: the signature does not verify") from exc


class LocalTrust:
    """A throwaway in-memory CA for a simulation or a test, where every site runs in one
    process: it gives each site an identity so the same signed-contribution checks run as in
    a federation (a networked site always uses its kit's identity instead)."""

    def __init__(self) -> None:
        from fedcare.pki import certs

        self._certs = certs
        self._authority = certs.build_authority("simulation", now=certs.utc_now(),
                                                valid_days=30)
        self._identities: dict[str, SiteIdentity] = {}

    def identity(self, site: str) -> SiteIdentity:
        if site not in self._identities:
            c = self._certs
            key = c.new_private_key()
            not_before, not_after = c.leaf_validity(self._authority.cert, c.utc_now(), 30)
            cert = c.issue_site_certificate(self._authority, key.public_key(), site,
                                            "simulation", not_before=not_before,
                                            not_after=not_after)
            self._identities[site] = SiteIdentity(site, key, cert, self._authority.cert)
        return self._identities[site]


@dataclass
class FixedKeys:
    """One secret context for every study (simulations and tests: nothing to exchange)."""

    secret: bytes = field(repr=False)
    _ctx: HEContext | None = field(default=None, repr=False)

    def context(self, study: str) -> HEContext:
        if self._ctx is None:
            self._ctx = HEContext.load_secret(self.secret)
        return self._ctx


# -------------------------------------------------------------------------- contributions
def contribution_message(study: str, round_: int, site: str, ciphertext: bytes) -> bytes:
    """What a site signs for its ciphertext: its sha256 bound to the study, round and site, so
    the signature cannot be moved to another round, study or site."""
    body = {"study": study, "round": int(round_), "site": site,
            "sha256": hashlib.sha256(ciphertext).hexdigest()}
    return _CONTRIBUTION + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def verify_contributions(identity: SiteIdentity, study: str, round_: int,
                         included: list[str], arrays: Mapping[str, Any]) -> dict[str, bytes]:
    """``{site: ciphertext}`` for the ``included`` sites whose signed contributions all
    verify (``ct.<site>``, ``sig.<site>``, ``cert.<site>`` in ``arrays``); any missing,
    unsigned, foreign or mis-signed one refuses the whole task."""
    out = {}
    for site in included:
        try:
            ct, sig, der = (bytes(arrays[f"{k}.{site}"].tobytes()) for k in ("ct", "sig", "cert"))
        except KeyError as exc:
            raise ProtocolError(f"refusing to decrypt: site {site}'s contribution comes without "
                                "its ciphertext, signature and certificate") from exc
        cert = identity.peer(der, site)
        verify_signature(cert, contribution_message(study, round_, site, ct), sig,
                         f"refusing to decrypt: site {site}'s contribution to round {round_}")
        out[site] = ct
    return out


# ------------------------------------------------------------------------- sealed secrets
def _canonical(header: Mapping[str, Any]) -> bytes:
    return json.dumps(dict(header), sort_keys=True, separators=(",", ":")).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise ProtocolError(f"sealed key: {what} is missing")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise ProtocolError(f"sealed key: {what} is not base64") from exc


def _aead_key(shared: bytes, header: Mapping[str, Any]) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=_SEAL + _canonical(header)).derive(shared)


def seal_secret(sender: SiteIdentity, recipient: str, recipient_cert_der: bytes, study: str,
                secret: bytes) -> bytes:
    """``secret`` encrypted to ``recipient``'s certificate key, signed by ``sender``.

    ECDH (P-256) between a fresh ephemeral key and the recipient's certificate key, HKDF-
    SHA256 over the shared secret (bound to study, sender and recipient), AES-256-GCM with the
    header as associated data. Refused unless the recipient's certificate chains to the
    sender's CA, names ``recipient`` and allows key agreement.
    """
    cert = sender.peer(recipient_cert_der, recipient)
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        agrees = usage.key_agreement
    except x509.ExtensionNotFound:
        agrees = False
    public = cert.public_key()
    if not agrees or not isinstance(public, ec.EllipticCurvePublicKey):
        raise ProtocolError(f"site {recipient}'s certificate does not allow key agreement; "
                            "it needs a certificate issued by this fedcare version")
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    header = {"study": study, "sender": sender.site, "recipient": recipient,
              "recipient_cert_sha256": hashlib.sha256(bytes(recipient_cert_der)).hexdigest(),
              "ephemeral": _b64(ephemeral.public_key().public_bytes(
                  serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)),
              "nonce": _b64(os.urandom(12))}
    key = _aead_key(ephemeral.exchange(ec.ECDH(), public), header)
    body = AESGCM(key).encrypt(_unb64(header["nonce"], "nonce"), secret, _canonical(header))
    signed = _SEAL + _canonical(header) + hashlib.sha256(body).digest()
    return frame(SEAL_MAGIC, {"header": header, "sender_cert": _b64(sender.cert_der()),
                              "signature": _b64(sender.sign(signed))}, body)


def open_secret(recipient: SiteIdentity, blob: bytes, study: str, sender: str) -> bytes:
    """The secret in a blob :func:`seal_secret` made for ``recipient``, after checking that
    it was sealed for this study, for this site and by ``sender`` (the study's key maker)."""
    try:
        outer, body = unframe(blob, SEAL_MAGIC, what="sealed key", max_header=_MAX_SEAL_HEADER)
    except FedcareError as exc:
        raise ProtocolError(f"sealed key: {exc.message}") from exc
    header = outer.get("header")
    if not isinstance(header, dict):
        raise ProtocolError("sealed key: header is missing")
    expected = {"study": study, "sender": sender, "recipient": recipient.site}
    for name, want in expected.items():
        if header.get(name) != want:
            raise ProtocolError(f"sealed key is for {name} {header.get(name)!r}, expected "
                                f"{want!r}; refusing it")
    if header.get("recipient_cert_sha256") != hashlib.sha256(recipient.cert_der()).hexdigest():
        raise ProtocolError("sealed key was made for another certificate of this site")
    cert = recipient.peer(_unb64(outer.get("sender_cert"), "sender certificate"), sender)
    signed = _SEAL + _canonical(header) + hashlib.sha256(bytes(body)).digest()
    verify_signature(cert, signed, _unb64(outer.get("signature"), "signature"),
                     f"sealed key from site {sender}")
    try:
        ephemeral = ec.EllipticCurvePublicKey.from_encoded_point(
            ec.SECP256R1(), _unb64(header.get("ephemeral"), "ephemeral key"))
        key = _aead_key(recipient.key.exchange(ec.ECDH(), ephemeral), header)
        return AESGCM(key).decrypt(_unb64(header.get("nonce"), "nonce"), bytes(body),
                                   _canonical(header))
    except (ValueError, InvalidTag) as exc:
        raise ProtocolError("sealed key does not decrypt with this site's key") from exc
