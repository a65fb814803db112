"""Using a federation's certificates: hub/node TLS settings, SSL contexts, peer identity.

Two layers check a site, on purpose:

1. **TLS** (``ssl``, i.e. OpenSSL): the hub demands a client certificate chaining to the
   federation CA and nothing else; the node trusts only the federation CA for the hub, never
   the system store. Revocation is *not* checked here: Python's ``ssl`` can only load CRLs
   into a context (``VERIFY_CRL_CHECK_LEAF``), cannot drop a superseded one, and a running
   server would have to rebuild and swap its context to pick up a new revocation.
2. **Application** (:func:`verify_peer`): the hub turns the peer certificate into a site name
   and refuses it when it is foreign, not a site certificate, revoked in the current CRL
   (:func:`reload_crl` re-reads it, so a running hub sees new revocations) or out of date.

A hub folder holds ``hub.toml`` (:class:`HubConfig`); a site's startup kit holds
``node.toml`` (:class:`NodeConfig`). Paths in them are relative to the file's own folder, so
both folders can be moved or copied to another machine as they are.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import Field

from fedcare.core.errors import ConfigError
from fedcare.core.settings import Section, load_toml
from fedcare.pki.certs import SITE_URI_PREFIX, hub_url, is_site_name
from fedcare.pki.errors import (
    CrlError,
    ExpiredCertificate,
    ProvisioningConfigError,
    RevokedCertificate,
    UnknownCertificate,
)

HUB_CONFIG_FILE = "hub.toml"
NODE_CONFIG_FILE = "node.toml"
RESEARCHER_CONFIG_FILE = "researcher.toml"


@dataclass(frozen=True)
class TlsFiles:
    """Where one party's TLS material lives: its certificate, its key and the federation CA."""

    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class HubConfig:
    """Contents of a hub folder's ``hub.toml``, with absolute paths."""

    federation_id: str
    host: str
    port: int
    tls: TlsFiles
    crl: Path

    @property
    def url(self) -> str:
        return hub_url(self.host, self.port)


@dataclass(frozen=True)
class NodeConfig:
    """Contents of a site startup kit's ``node.toml``, with absolute paths."""

    federation_id: str
    site: str
    hub_url: str
    tls: TlsFiles


@dataclass(frozen=True)
class ResearcherConfig:
    """Contents of a researcher folder's ``researcher.toml``: where the hub is, the CA that
    vouches for it and the bearer-token file. No private key: that is the point of it."""

    federation_id: str
    hub_url: str
    ca: Path
    token: Path


# --- reading hub.toml / node.toml -----------------------------------------------------------

class _Tls(Section):
    cert: str = Field("", description="The certificate file.")
    key: str = Field("", description="The private key file.")
    ca: str = Field(min_length=1, description="The federation CA certificate.")
    crl: str = Field("", description="The revocation list (hub only).")


class _HubSection(Section):
    host: str = Field(min_length=1, max_length=253)
    port: int = Field(ge=1, le=65535)
    url: str = ""


class _UrlSection(Section):
    url: str = Field(min_length=1, max_length=2048)


class _HubFile(Section):
    federation_id: str = Field(min_length=1)
    hub: _HubSection
    tls: _Tls


class _NodeFile(Section):
    federation_id: str = Field(min_length=1)
    site: str = Field(min_length=1)
    hub: _UrlSection
    tls: _Tls


class _ResearcherFile(Section):
    federation_id: str = Field(min_length=1)
    hub: _UrlSection
    tls: _Tls
    token: str = Field(min_length=1)


def _read(path: Path, schema: type[Section], what: str) -> Any:
    """``path`` through the one settings loader; every problem is a provisioning error that
    names the file and the key."""
    if not path.is_file():
        raise ProvisioningConfigError(f"{path} is missing")
    try:
        return load_toml(path, schema, what=what)
    except ConfigError as exc:
        raise ProvisioningConfigError(exc.problems, source=str(path)) from None


def _tls_files(path: Path, tls: _Tls, *names: str) -> TlsFiles:
    """The TLS files a kit names, absolute; each of ``names`` must be given."""
    missing = [n for n in names if not getattr(tls, n)]
    if missing:
        raise ProvisioningConfigError([f"missing key 'tls.{n}'" for n in missing],
                                      source=str(path))
    here = path.parent
    return TlsFiles(*((here / getattr(tls, n)).resolve() for n in ("cert", "key", "ca")))


def load_hub_config(hub_dir: str | Path) -> HubConfig:
    """Read ``hub_dir/hub.toml``."""
    path = Path(hub_dir) / HUB_CONFIG_FILE
    doc: _HubFile = _read(path, _HubFile, "hub config")
    tls = _tls_files(path, doc.tls, "cert", "key", "crl")
    return HubConfig(federation_id=doc.federation_id, host=doc.hub.host, port=doc.hub.port,
                     tls=tls, crl=(path.parent / doc.tls.crl).resolve())


def load_node_config(kit_dir: str | Path) -> NodeConfig:
    """Read a site startup kit's ``node.toml``."""
    path = Path(kit_dir) / NODE_CONFIG_FILE
    doc: _NodeFile = _read(path, _NodeFile, "site kit config")
    return NodeConfig(federation_id=doc.federation_id, site=doc.site, hub_url=doc.hub.url,
                      tls=_tls_files(path, doc.tls, "cert", "key"))


def load_researcher_config(folder: str | Path) -> ResearcherConfig:
    """Read ``folder/researcher.toml`` (made by `fedcare provision`)."""
    path = Path(folder) / RESEARCHER_CONFIG_FILE
    doc: _ResearcherFile = _read(path, _ResearcherFile, "researcher config")
    return ResearcherConfig(federation_id=doc.federation_id, hub_url=doc.hub.url,
                            ca=(path.parent / doc.tls.ca).resolve(),
                            token=(path.parent / doc.token).resolve())


def researcher_config_document(federation_id: str, url: str,
                               token: str = "researcher.token") -> dict[str, Any]:
    """What ``researcher.toml`` holds: the hub's URL, the CA file and the token file (the
    admin folder has the same file, naming ``admin.token``)."""
    return {"federation_id": federation_id, "hub": {"url": url}, "tls": {"ca": "ca.crt"},
            "token": token}


def hub_config_document(federation_id: str, host: str, port: int) -> dict[str, Any]:
    """What ``hub.toml`` holds in a freshly provisioned hub folder."""
    return {"federation_id": federation_id,
            "hub": {"host": host, "port": port, "url": hub_url(host, port)},
            "tls": {"cert": "hub.crt", "key": "hub.key", "ca": "ca.crt", "crl": "crl.pem"}}


def node_config_document(federation_id: str, site: str, url: str) -> dict[str, Any]:
    """What ``node.toml`` holds in a freshly issued site startup kit."""
    return {"federation_id": federation_id, "site": site, "hub": {"url": url},
            "tls": {"cert": "site.crt", "key": "site.key", "ca": "ca.crt"}}


# --- SSL contexts ---------------------------------------------------------------------------

def _load_material(context: ssl.SSLContext, tls: TlsFiles, who: str) -> None:
    try:
        context.load_verify_locations(cafile=tls.ca)
        context.load_cert_chain(certfile=tls.cert, keyfile=tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise ProvisioningConfigError(
            f"cannot load the {who}'s TLS files ({tls.cert.name}, {tls.key.name}, "
            f"{tls.ca.name}) from {tls.cert.parent}: {exc}") from exc


def server_ssl_context(hub_dir: str | Path) -> ssl.SSLContext:
    """The hub's TLS server context: TLS >= 1.2, client certificate required, federation CA only.

    Revocation is left to :func:`verify_peer` (see the module docstring), so a revoked site
    still completes the handshake and must be refused by the application right after it.
    """
    config = load_hub_config(hub_dir)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    _load_material(context, config.tls, "hub")
    return context


def client_ssl_context(kit_dir: str | Path) -> ssl.SSLContext:
    """A site's TLS client context: presents the site certificate, trusts only the federation CA.

    Host names are checked (``check_hostname``): connect with the host from ``node.toml``,
    ``localhost`` or ``127.0.0.1``. The system trust store is never loaded, so no public CA (and
    no hospital TLS-inspection proxy) can impersonate the hub.
    """
    config = load_node_config(kit_dir)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname + CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    _load_material(context, config.tls, f"site {config.site}")
    return context


# --- application-level identity -------------------------------------------------------------

def load_ca_certificate(hub_dir: str | Path) -> x509.Certificate:
    """The federation CA certificate a hub folder trusts."""
    path = load_hub_config(hub_dir).tls.ca
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ProvisioningConfigError(f"cannot read the federation CA certificate {path}: "
                                      f"{exc}") from exc


def check_crl(crl: x509.CertificateRevocationList, ca_cert: x509.Certificate) -> None:
    """Raise :class:`CrlError` unless ``crl`` was issued and signed by ``ca_cert``."""
    key = ca_cert.public_key()
    # Only signing keys can have signed a CRL (the federation CA's is EC P-256); anything else
    # - key-agreement or KEM keys, which newer `cryptography` releases can also return - is
    # refused rather than passed on.
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey
                      | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey) \
            or crl.issuer != ca_cert.subject or not crl.is_signature_valid(key):
        raise CrlError("the revocation list is not signed by this federation's CA")


def reload_crl(hub_dir: str | Path) -> x509.CertificateRevocationList:
    """Read the hub's current CRL (``crl.pem``) and check it is signed by the federation CA.

    Cheap (one small file and one signature check): a hub may call it per connection, on a
    timer, or on SIGHUP, and pass the result to :func:`verify_peer`. Fails closed: a missing,
    unreadable or foreign CRL raises :class:`CrlError` instead of meaning "nothing revoked".
    """
    config = load_hub_config(hub_dir)
    try:
        crl = x509.load_pem_x509_crl(config.crl.read_bytes())
    except (OSError, ValueError) as exc:
        raise CrlError(f"cannot read the revocation list {config.crl}: {exc}") from exc
    check_crl(crl, load_ca_certificate(hub_dir))
    return crl


def _describe(cert: x509.Certificate) -> str:
    return f"certificate '{cert.subject.rfc4514_string()}' (serial {cert.serial_number:x})"


def _site_identity(cert: x509.Certificate) -> str:
    """The site name a certificate claims, if it is shaped like a site certificate at all."""
    exts = cert.extensions
    try:
        if exts.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise UnknownCertificate(f"{_describe(cert)} is a CA certificate, not a site's")
    except x509.ExtensionNotFound:
        pass
    try:
        eku = exts.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is None or ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise UnknownCertificate(f"{_describe(cert)} is not a site certificate: it lacks the "
                                 "clientAuth extended key usage")
    try:
        uris = exts.get_extension_for_class(x509.SubjectAlternativeName).value \
            .get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    names = [u.removeprefix(SITE_URI_PREFIX) for u in uris if u.startswith(SITE_URI_PREFIX)]
    if len(names) != 1 or not is_site_name(names[0]):
        raise UnknownCertificate(f"{_describe(cert)} must name exactly one site as a SAN URI "
                                 f"{SITE_URI_PREFIX}<name>; found {uris or 'none'}")
    common = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if common and common != [names[0]]:
        raise UnknownCertificate(f"{_describe(cert)}: its common name {common} disagrees with "
                                 f"its site URI {SITE_URI_PREFIX}{names[0]}")
    return names[0]


def certificate_site(cert: x509.Certificate) -> str:
    """The site a certificate names (SAN URI agreeing with its CN, clientAuth, not a CA), or
    :class:`UnknownCertificate`. Says nothing about who issued it: check that separately."""
    return _site_identity(cert)


def verify_peer(cert_der: bytes, ca_cert: x509.Certificate,
                crl: x509.CertificateRevocationList, *, now: datetime | None = None) -> str:
    """Return the site name a client certificate proves, or raise why it proves nothing.

    The TLS layer already checked the chain during the handshake; this is the hub's
    application-level identity and revocation check, done here because Python's ``ssl`` CRL
    support is awkward (contexts cannot drop a superseded CRL, so a running server could not
    pick up a revocation without rebuilding its context). Checks, in order:

    1. ``cert_der`` is an X.509 certificate signed by ``ca_cert``  -> :class:`UnknownCertificate`
    2. it is a site certificate: not a CA, ``clientAuth`` EKU, exactly one
       ``fedcare://site/<name>`` SAN URI agreeing with its CN      -> :class:`UnknownCertificate`
    3. its serial is not in ``crl`` (which must be signed by ``ca_cert``, else
       :class:`~fedcare.pki.errors.CrlError`)                    -> :class:`RevokedCertificate`
    4. ``now`` lies within its validity period                       -> :class:`ExpiredCertificate`

    Args:
        cert_der: the peer certificate, e.g. ``ssl_socket.getpeercert(binary_form=True)``.
        ca_cert: the federation CA (:func:`load_ca_certificate`).
        crl: the current revocation list (:func:`reload_crl`).
        now: the time to check validity against (default: now, UTC).
    """
    check_crl(crl, ca_cert)
    try:
        cert = x509.load_der_x509_certificate(cert_der)
    except (TypeError, ValueError) as exc:
        raise UnknownCertificate("the peer presented no valid X.509 certificate") from exc
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise UnknownCertificate(f"{_describe(cert)} was not issued by this federation's CA "
                                 f"('{ca_cert.subject.rfc4514_string()}')") from exc
    site = _site_identity(cert)
    revoked = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    if revoked is not None:
        raise RevokedCertificate(f"certificate serial {cert.serial_number:x} was revoked on "
                                 f"{revoked.revocation_date_utc:%Y-%m-%d %H:%M} UTC", site=site)
    now = now or datetime.now(UTC)
    if now < cert.not_valid_before_utc:
        raise ExpiredCertificate(f"certificate is not valid before "
                                 f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC", site=site)
    if now > cert.not_valid_after_utc:
        raise ExpiredCertificate(f"certificate expired on "
                                 f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC", site=site)
    return site
