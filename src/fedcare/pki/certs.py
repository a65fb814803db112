"""Certificate and CRL builders for a federation CA, and the naming rules they rely on.

Keys are EC P-256 (ECDSA with SHA-256): every TLS stack Python's ``ssl`` links against
supports it, and it is far cheaper than RSA. The CA is a self-signed root with
``pathLenConstraint = 0``, so it can sign leaf certificates only. Every leaf carries
BasicConstraints ``CA=false``, KeyUsage ``digitalSignature``, exactly one EKU (``serverAuth``
for the hub, ``clientAuth`` for a site) and Subject/Authority Key Identifiers (required by
OpenSSL's strict X.509 mode).

A site's identity is the SAN URI ``fedcare://site/<name>`` (its CN repeats the name for
humans), so the hub never has to parse a free-text subject to know who is calling.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedcare.pki.errors import ProvisioningConfigError

SITE_URI_PREFIX = "fedcare://site/"
CLOCK_SKEW = timedelta(minutes=5)
"""Certificates start this long before their issue time, so a site whose clock is slightly
behind the CA's can use a fresh kit at once."""

_SITE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_REASONS = {r.value.lower(): r for r in x509.ReasonFlags
            if r not in (x509.ReasonFlags.unspecified, x509.ReasonFlags.remove_from_crl)}
_REASONS.update({r.name.replace("_", ""): r for r in _REASONS.values()})


@dataclass(frozen=True)
class Authority:
    """The federation CA: its private key and self-signed certificate."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


@dataclass(frozen=True)
class RevokedEntry:
    """One line of the CRL: which serial, since when, and the operator's stated reason."""

    serial: int
    revoked_at: datetime
    reason: str = ""


# --- naming rules --------------------------------------------------------------------------

def check_site_name(name: str) -> str:
    """Return ``name`` if it is a valid site name, else raise :class:`ProvisioningConfigError`.

    Lower-case letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit, at most
    63 characters: safe as a folder name on every OS, in a URI and in a certificate.
    """
    if not isinstance(name, str) or not _SITE_NAME.match(name):
        raise ProvisioningConfigError(
            f"invalid site name {name!r}: use 1-63 lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter or digit")
    return name


def is_site_name(name: str) -> bool:
    return bool(_SITE_NAME.match(name))


def check_host(host: str) -> str:
    """Normalise a hub host (DNS name or IP address) or raise :class:`ProvisioningConfigError`."""
    text = host.strip().strip("[]")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    text = text.lower().rstrip(".")
    if not text or len(text) > 253 or not all(_DNS_LABEL.match(p) for p in text.split(".")):
        raise ProvisioningConfigError(
            f"invalid hub host {host!r}: give a DNS name (letters, digits, '-', '.') "
            "or an IP address")
    return text


def hub_url(host: str, port: int) -> str:
    """``https://host:port``, with IPv6 literals in brackets."""
    try:
        is_v6 = ipaddress.ip_address(host).version == 6
    except ValueError:
        is_v6 = False
    return f"https://[{host}]:{port}" if is_v6 else f"https://{host}:{port}"


def reason_flag(reason: str) -> x509.ReasonFlags | None:
    """The RFC 5280 reason code a free-text reason names exactly (``key-compromise``), if any."""
    key = re.sub(r"[\s_-]", "", reason).lower()
    return _REASONS.get(key)


# --- keys, encodings, fingerprints -------------------------------------------------------

def new_private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def certificate_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER encoding, lower-case hex (what ``openssl x509 -fingerprint`` shows)."""
    return cert.fingerprint(hashes.SHA256()).hex()


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def leaf_validity(ca_cert: x509.Certificate, now: datetime,
                  days: int) -> tuple[datetime, datetime]:
    """(not_before, not_after) for a leaf: never outliving the CA that vouches for it."""
    not_after = min(now + timedelta(days=days), ca_cert.not_valid_after_utc)
    return now - CLOCK_SKEW, not_after


# --- builders -------------------------------------------------------------------------------

def build_authority(federation_id: str, *, now: datetime, valid_days: int) -> Authority:
    """A fresh self-signed federation CA (CA=true, pathlen=0, keyCertSign + cRLSign)."""
    key = new_private_key()
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedcare"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"fedcare federation CA {federation_id}"),
    ])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(key, cert)


def _leaf(ca: Authority, subject: x509.Name, public_key: ec.EllipticCurvePublicKey,
          not_before: datetime, not_after: datetime, eku: x509.ObjectIdentifier,
          san: list[x509.GeneralName], *, key_agreement: bool = False) -> x509.Certificate:
    ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=key_agreement, key_cert_sign=False,
            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                       critical=False)
        .sign(ca.key, hashes.SHA256())
    )


def issue_hub_certificate(ca: Authority, public_key: ec.EllipticCurvePublicKey, host: str, *,
                          not_before: datetime, not_after: datetime) -> x509.Certificate:
    """The hub's TLS server certificate (serverAuth).

    SAN: ``host`` (as a DNS name or an IP address) plus ``localhost`` and ``127.0.0.1``, so the
    same hub folder works for local tests and behind a reverse proxy on the same machine.
    """
    names: list[x509.GeneralName] = []
    for entry in (host, "localhost", "127.0.0.1"):
        try:
            general: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(entry))
        except ValueError:
            general = x509.DNSName(entry)
        if general not in names:
            names.append(general)
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedcare"),
                         x509.NameAttribute(NameOID.COMMON_NAME, host)])
    return _leaf(ca, subject, public_key, not_before, not_after,
                 ExtendedKeyUsageOID.SERVER_AUTH, names)


def issue_site_certificate(ca: Authority, public_key: ec.EllipticCurvePublicKey, site: str,
                           federation_id: str, *, not_before: datetime,
                           not_after: datetime) -> x509.Certificate:
    """A site's TLS client certificate (clientAuth; CN and SAN URI name the site).

    KeyUsage also allows ``keyAgreement``: the sites of a CKKS study send each other the
    study's secret context encrypted to this key (ECDH, :mod:`fedcare.engine.ckks_custody`).
    """
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"fedcare federation {federation_id}"),
        x509.NameAttribute(NameOID.COMMON_NAME, check_site_name(site)),
    ])
    return _leaf(ca, subject, public_key, not_before, not_after,
                 ExtendedKeyUsageOID.CLIENT_AUTH,
                 [x509.UniformResourceIdentifier(SITE_URI_PREFIX + site)], key_agreement=True)


# --- certificate signing requests (a site's key never leaves the site) ----------------------

def build_site_csr(key: ec.EllipticCurvePrivateKey, site: str) -> x509.CertificateSigningRequest:
    """The request a site sends its coordinator: its public key and name, signed with its key.

    The coordinator takes only the public key and the name from it (after checking the
    signature); every extension of the certificate is the CA's choice, never the requester's.
    """
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, check_site_name(site))])
    return (x509.CertificateSigningRequestBuilder().subject_name(subject)
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(SITE_URI_PREFIX + site)]), critical=False)
            .sign(key, hashes.SHA256()))


def read_site_csr(pem: bytes) -> tuple[str, ec.EllipticCurvePublicKey]:
    """``(site name, public key)`` of a site's CSR, or :class:`ProvisioningConfigError`.

    Refused: not a PEM CSR, a bad self-signature (the requester does not hold the key), a key
    other than EC P-256, no common name or a common name that is not a valid site name.
    """
    try:
        csr = x509.load_pem_x509_csr(pem)
    except (TypeError, ValueError) as exc:
        raise ProvisioningConfigError(f"not a PEM certificate signing request: {exc}; make "
                                      "one with `fedcare node init` at the site") from exc
    if not csr.is_signature_valid:
        raise ProvisioningConfigError("the request's signature is invalid: it was not signed "
                                      "by the key it asks a certificate for")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve,
                                                                          ec.SECP256R1):
        raise ProvisioningConfigError("the request's key must be EC P-256 (what `fedcare node "
                                      "init` makes)")
    names = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if len(names) != 1 or not isinstance(names[0], str):
        raise ProvisioningConfigError("the request must name exactly one site as its common "
                                      f"name, found {names}")
    return check_site_name(names[0]), key


def build_crl(ca: Authority, entries: Iterable[RevokedEntry], *, number: int,
              now: datetime) -> x509.CertificateRevocationList:
    """A CRL signed by the CA listing ``entries``, valid until the CA itself expires.

    ``nextUpdate`` is the CA's expiry rather than a short horizon: the list is produced and
    consumed by the same operator on the hub's disk, never fetched from a distribution point,
    so a "stale" list signals nothing and a short horizon would only lock every site out the
    day somebody forgot to re-sign it.
    """
    ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now)
        .next_update(max(ca.cert.not_valid_after_utc, now + timedelta(days=1)))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                       critical=False)
    )
    for entry in entries:
        revoked = (x509.RevokedCertificateBuilder()
                   .serial_number(entry.serial).revocation_date(entry.revoked_at))
        flag = reason_flag(entry.reason)
        if flag is not None:
            revoked = revoked.add_extension(x509.CRLReason(flag), critical=False)
        builder = builder.add_revoked_certificate(revoked.build())
    return builder.sign(ca.key, hashes.SHA256())


def crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0
