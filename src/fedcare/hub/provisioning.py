"""Federation provisioning: create the CA and the hub's folder, sign each site's request.

Layout of a federation folder (everything with a key in it is 0700, every key 0600)::

    DIR/federation.toml        who is in the federation: id, hub, sites (serial, sha256
                               fingerprint, expiry), revocations. Written by these functions only.
    DIR/ca/ca.key, ca.crt      the federation CA. Keep ``ca/`` offline and backed up.
    DIR/hub/                   copy to the hub machine: hub.key, hub.crt, ca.crt, crl.pem, hub.toml,
                               users.bootstrap.json (the first users' token HASHES, no token)
    DIR/admin/                 the hub's first admin (adds and revokes users): researcher.toml
                               (hub URL; its token file is admin.token), ca.crt, admin.token
    DIR/researcher/            give to the researcher (user ``researcher``): researcher.toml
                               (hub URL), ca.crt, researcher.token; no private key
    DIR/sites/<name>/          what the coordinator sends a site: site.crt, ca.crt, node.toml;
                               no private key

Key custody: a site's private key is made AT the site (``fedcare node init``,
:mod:`fedcare.pki.kit`), which sends only a certificate signing request; :func:`add_site`
signs it. The only private keys in this folder are the CA's and the hub's, and there is no
CKKS secret anywhere here: the sites of a CKKS study make and share its key among themselves
(:mod:`fedcare.engine.ckks_custody`). :func:`create_federation` with ``sites`` and
``site_kits`` runs the same init, sign and install steps for a whole federation on one machine
(demos, tests), writing each key into that site's own folder outside ``DIR``.

Nothing is ever half-written: a new federation or site folder is built in a hidden staging folder
next to its destination and renamed into place; single files are replaced atomically; changes to
an existing federation hold an advisory lock on ``DIR``. A revocation writes the CRL *before*
``federation.toml``, so a crash in between leaves the site revoked and a re-run completes it.

The hub uses :func:`server_ssl_context`, :func:`load_ca_certificate`, :func:`reload_crl` and
:func:`verify_peer`; a node uses :func:`client_ssl_context` and :func:`load_node_config`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import tomllib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedcare.pki import certs
from fedcare.pki.certs import Authority, RevokedEntry
from fedcare.pki.errors import (
    CrlError,
    ExpiredCertificate,
    FederationExistsError,
    PeerCertificateError,
    ProvisioningConfigError,
    ProvisioningError,
    RevokedCertificate,
    SiteExistsError,
    SiteNotFoundError,
    UnknownCertificate,
)
from fedcare.pki.files import (
    PRIVATE_FILE_MODE,
    atomic_write,
    dump_toml,
    exclusive_lock,
    make_private_dir,
    write_private_key,
)
from fedcare.pki.trust import (
    RESEARCHER_CONFIG_FILE,
    HubConfig,
    NodeConfig,
    TlsFiles,
    client_ssl_context,
    hub_config_document,
    load_ca_certificate,
    load_hub_config,
    load_node_config,
    load_researcher_config,
    node_config_document,
    reload_crl,
    researcher_config_document,
    server_ssl_context,
    verify_peer,
)

__all__ = [
    "CrlError", "ExpiredCertificate", "Federation", "FederationExistsError", "HubConfig",
    "HubRecord", "NodeConfig", "PeerCertificateError", "ProvisioningConfigError",
    "ProvisioningError", "RevocationRecord", "RevokeResult", "RevokedCertificate",
    "SiteExistsError", "SiteNotFoundError", "SiteRecord", "TlsFiles", "UnknownCertificate",
    "add_site", "client_ssl_context", "create_federation", "load_ca_certificate",
    "load_federation", "load_hub_config", "load_node_config", "load_researcher_config",
    "reload_crl", "revoke_site",
    "server_ssl_context", "verify_peer",
]

FEDERATION_FILE = "federation.toml"
FORMAT_VERSION = 1
DEFAULT_PORT = 8443
DEFAULT_VALID_DAYS = 365
DEFAULT_CA_VALID_DAYS = 3650
_HEADER = ("fedcare federation record, written by `fedcare provision`: do not edit by hand.\n"
           "Serials and sha256 fingerprints are lower-case hex.")


@dataclass(frozen=True)
class RevocationRecord:
    """A revoked site certificate."""

    site: str
    serial: int
    revoked_at: datetime
    reason: str = ""


@dataclass(frozen=True)
class SiteRecord:
    """A site's certificate as issued, and the folder of what was sent back to the site
    (``kit_dir``: site.crt, ca.crt, node.toml; the site's key is only in its own kit)."""

    name: str
    serial: int
    fingerprint: str
    not_after: datetime
    kit_dir: Path
    revocation: RevocationRecord | None = None

    @property
    def revoked(self) -> bool:
        return self.revocation is not None


@dataclass(frozen=True)
class HubRecord:
    """The hub's address and certificate."""

    host: str
    port: int
    serial: int
    fingerprint: str
    not_after: datetime
    dir: Path

    @property
    def url(self) -> str:
        return certs.hub_url(self.host, self.port)


@dataclass(frozen=True)
class Federation:
    """A provisioned federation folder, as recorded in its ``federation.toml``."""

    root: Path
    federation_id: str
    created: datetime
    ca_cert_path: Path
    ca_key_path: Path
    ca_fingerprint: str
    ca_not_after: datetime
    hub: HubRecord
    sites: tuple[SiteRecord, ...]
    revocations: tuple[RevocationRecord, ...]

    @property
    def sites_dir(self) -> Path:
        return self.root / "sites"

    def site(self, name: str) -> SiteRecord:
        """The site called ``name``, or :class:`SiteNotFoundError`."""
        for record in self.sites:
            if record.name == name:
                return record
        known = ", ".join(s.name for s in self.sites) or "none"
        raise SiteNotFoundError(f"no site '{name}' in federation {self.federation_id} "
                                f"(sites: {known})")


@dataclass(frozen=True)
class RevokeResult:
    """What :func:`revoke_site` did: ``newly_revoked`` is False when it already was."""

    revocation: RevocationRecord
    newly_revoked: bool


# --- public operations ----------------------------------------------------------------------

def create_federation(root: str | Path, *, hub_host: str, hub_port: int = DEFAULT_PORT,
                      sites: Iterable[str] = (), site_kits: str | Path | None = None,
                      valid_days: int = DEFAULT_VALID_DAYS,
                      ca_valid_days: int = DEFAULT_CA_VALID_DAYS,
                      now: datetime | None = None) -> Federation:
    """Create a new federation in ``root`` (absent or empty): CA, hub and researcher folders.

    Args:
        root: the federation folder; refused if it exists and is not empty.
        hub_host: DNS name or IP address sites use to reach the hub (``localhost`` and
            ``127.0.0.1`` are always added to the hub certificate too).
        hub_port: the hub's HTTPS port.
        sites: for demos and tests on one machine: sites to set up at once, each in
            ``site_kits/<name>`` exactly as a site would (its own key, a CSR that
            :func:`add_site` signs, then :func:`~fedcare.pki.kit.install_site_certificate`).
            A real site runs ``fedcare node init`` itself.
        site_kits: where those sites' own kits go; required with ``sites``, and never inside
            ``root`` (the coordinator's folder holds no site key).
        valid_days: validity of the hub and site certificates.
        ca_valid_days: validity of the CA (at least ``valid_days``).
        now: issue time (default: now, UTC); for tests.
    """
    root = Path(root).absolute()
    host = certs.check_host(hub_host)
    names = [certs.check_site_name(s) for s in sites]
    kits = Path(site_kits).absolute() if site_kits is not None else None
    problems = []
    if not 0 < hub_port < 65536:
        problems.append(f"hub port must be 1-65535, got {hub_port}")
    if valid_days < 1:
        problems.append(f"valid days must be at least 1, got {valid_days}")
    if ca_valid_days < valid_days:
        problems.append(f"the CA must be valid at least as long as its certificates "
                        f"({ca_valid_days} < {valid_days} days)")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"site names given more than once: {', '.join(duplicates)}")
    if names and kits is None:
        problems.append("sites need site_kits: the folder where each site's own kit (and "
                        "private key) is made, outside the federation folder")
    if kits is not None and (kits == root or root in kits.parents):
        problems.append(f"site kits ({kits}) must not be inside the federation folder {root}: "
                        "the coordinator never holds a site's private key")
    if problems:
        raise ProvisioningConfigError(problems)
    _check_free(root)
    now = now or certs.utc_now()
    federation_id = secrets.token_hex(8)
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        with _staging(root.parent, root.name) as stage:
            ca = certs.build_authority(federation_id, now=now, valid_days=ca_valid_days)
            make_private_dir(stage / "ca")
            write_private_key(stage / "ca" / "ca.key", certs.private_key_pem(ca.key))
            atomic_write(stage / "ca" / "ca.crt", certs.certificate_pem(ca.cert))
            hub = _write_hub_folder(stage / "hub", root / "hub", ca, federation_id, host,
                                    hub_port, valid_days, now)
            _write_people(stage, ca.cert, federation_id, hub.url)
            make_private_dir(stage / "sites")
            federation = Federation(
                root=root, federation_id=federation_id, created=now,
                ca_cert_path=root / "ca" / "ca.crt", ca_key_path=root / "ca" / "ca.key",
                ca_fingerprint=certs.fingerprint(ca.cert),
                ca_not_after=ca.cert.not_valid_after_utc, hub=hub, sites=(),
                revocations=())
            _save(federation, folder=stage)
            _publish(stage, root)
    except OSError as exc:
        raise ProvisioningError(f"cannot create federation in {root}: {exc}") from exc
    if kits is not None:
        from fedcare.pki.kit import init_site_kit, install_site_certificate

        for name in names:
            csr = init_site_kit(kits / name, name)  # the key is written here, at the site
            record = add_site(root, name, csr.read_bytes(), valid_days=valid_days, now=now)
            install_site_certificate(kits / name, record.kit_dir)
    return load_federation(root)


def load_federation(root: str | Path) -> Federation:
    """Read ``root/federation.toml`` (raises :class:`ProvisioningError` if there is none)."""
    root = Path(root).absolute()
    path = root / FEDERATION_FILE
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ProvisioningError(f"no federation in {root} ({FEDERATION_FILE} not found)") from exc
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ProvisioningConfigError(f"cannot read {path}: {exc}") from exc
    try:
        return _parse(doc, root)
    except (KeyError, TypeError, ValueError) as exc:
        raise ProvisioningConfigError(f"{FEDERATION_FILE} is malformed ({exc!r}); it is "
                                      "written by `fedcare provision` only", source=str(path)
                                      ) from exc


def add_site(root: str | Path, name: str | None, csr: bytes, *,
             valid_days: int = DEFAULT_VALID_DAYS, now: datetime | None = None) -> SiteRecord:
    """Sign a site's certificate signing request with the federation's CA.

    Writes ``root/sites/<name>/`` (site.crt, ca.crt, node.toml: nothing secret) for the
    coordinator to send back to the site, which installs it with ``fedcare node install-cert``.
    ``name`` (None: the CSR's) must be the name the CSR asks for. The certificate never
    outlives the CA. A name already issued (even if revoked) is refused.
    """
    asked, public_key = certs.read_site_csr(csr)
    if name is not None and certs.check_site_name(name) != asked:
        raise ProvisioningConfigError(f"the request is for site {asked!r}, not {name!r}; check "
                                      "which site sent it")
    name = asked
    if valid_days < 1:
        raise ProvisioningConfigError(f"valid days must be at least 1, got {valid_days}")
    federation = load_federation(root)
    try:
        with exclusive_lock(federation.root):
            federation = load_federation(root)
            kit_dir = federation.sites_dir / name
            if any(s.name == name for s in federation.sites):
                raise SiteExistsError(f"site '{name}' already has a certificate in federation "
                                      f"{federation.federation_id}; names are never reused")
            if kit_dir.exists():
                raise SiteExistsError(f"{kit_dir} exists but is not in {FEDERATION_FILE}; "
                                      "move it away first")
            ca = _load_authority(federation)
            now = now or certs.utc_now()
            with _staging(federation.sites_dir, name) as stage:
                record = _write_issued(stage, kit_dir, ca, federation.federation_id, name,
                                       public_key, federation.hub.url, valid_days, now)
                _publish(stage, kit_dir)
            _save(replace(federation, sites=(*federation.sites, record)))
    except OSError as exc:
        raise ProvisioningError(f"cannot add site '{name}' to {federation.root}: {exc}") from exc
    return record


def revoke_site(root: str | Path, name: str, *, reason: str = "",
                now: datetime | None = None) -> RevokeResult:
    """Revoke a site's certificate: re-sign ``hub/crl.pem``, then record it.

    Idempotent: revoking a revoked site changes nothing and returns ``newly_revoked=False``.
    A reason naming an RFC 5280 code (``key-compromise``, ``superseded``, ...) is also put in
    the CRL entry; any text is kept in ``federation.toml``.
    """
    federation = load_federation(root)
    try:
        with exclusive_lock(federation.root):
            federation = load_federation(root)
            site = federation.site(name)
            if site.revocation is not None:
                return RevokeResult(site.revocation, newly_revoked=False)
            ca = _load_authority(federation)
            revocation = RevocationRecord(name, site.serial, now or certs.utc_now(),
                                          reason.strip())
            revocations = (*federation.revocations, revocation)
            crl_path = load_hub_config(federation.hub.dir).crl
            number = _current_crl_number(crl_path) + 1
            crl = certs.build_crl(ca, _entries(revocations), number=number,
                                  now=revocation.revoked_at)
            atomic_write(crl_path, crl.public_bytes(serialization.Encoding.PEM))
            _save(replace(federation, revocations=revocations))
    except OSError as exc:
        raise ProvisioningError(f"cannot revoke site '{name}' in {federation.root}: "
                                f"{exc}") from exc
    return RevokeResult(revocation, newly_revoked=True)


# --- writing ---------------------------------------------------------------------------------

def _check_free(root: Path) -> None:
    if (root / FEDERATION_FILE).exists():
        raise FederationExistsError(f"{root} already holds a federation ({FEDERATION_FILE}); "
                                    "refusing to overwrite it")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FederationExistsError(f"{root} exists and is not an empty folder; refusing to "
                                    "write a federation there")


@contextmanager
def _staging(parent: Path, name: str) -> Iterator[Path]:
    """A private hidden folder beside the destination; removed unless it was published."""
    stage = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".staging", dir=parent))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _publish(stage: Path, destination: Path) -> None:
    """Rename a finished staging folder into place (onto nothing or an empty folder)."""
    try:
        os.replace(stage, destination)
    except OSError as exc:
        if destination.exists():
            raise FederationExistsError(f"{destination} appeared while it was being written; "
                                        "nothing was changed") from exc
        raise


def _write_hub_folder(folder: Path, final: Path, ca: Authority, federation_id: str, host: str,
                      port: int, valid_days: int, now: datetime) -> HubRecord:
    key = certs.new_private_key()
    not_before, not_after = certs.leaf_validity(ca.cert, now, valid_days)
    cert = certs.issue_hub_certificate(ca, key.public_key(), host, not_before=not_before,
                                       not_after=not_after)
    crl = certs.build_crl(ca, (), number=1, now=now)
    make_private_dir(folder)
    write_private_key(folder / "hub.key", certs.private_key_pem(key))
    atomic_write(folder / "hub.crt", certs.certificate_pem(cert))
    atomic_write(folder / "ca.crt", certs.certificate_pem(ca.cert))
    atomic_write(folder / "crl.pem", crl.public_bytes(serialization.Encoding.PEM))
    atomic_write(folder / "hub.toml",
                 dump_toml(hub_config_document(federation_id, host, port),
                           header="fedcare hub settings (paths relative to this file)").encode())
    return HubRecord(host, port, cert.serial_number, certs.fingerprint(cert),
                     cert.not_valid_after_utc, final)


#: The users provisioning makes: (name, role, folder, token file). The hub imports their
#: hashes at its first start (``hub/users.bootstrap.json``); anyone else is added by the admin
#: (``fedcare users add``).
FIRST_USERS = (("admin", "admin", "admin", "admin.token"),
               ("researcher", "researcher", "researcher", "researcher.token"))


def _write_people(root: Path, ca_cert: x509.Certificate, federation_id: str, url: str) -> None:
    """The first users: each one's folder (hub URL, CA certificate, their own token; no key)
    and, in the hub folder, only their tokens' argon2 hashes (``users.bootstrap.json``,
    0600): the hub's machine never holds a usable token."""
    from fedcare.hub.users import BOOTSTRAP_FILE, hash_token, new_token

    entries = []
    for name, role, folder_name, token_file in FIRST_USERS:
        token_id, token = new_token()
        folder = root / folder_name
        if not folder.is_dir():  # `provision users` keeps an existing researcher folder
            make_private_dir(folder)
        atomic_write(folder / token_file, token.encode(), mode=PRIVATE_FILE_MODE)
        atomic_write(folder / "ca.crt", certs.certificate_pem(ca_cert))
        atomic_write(folder / RESEARCHER_CONFIG_FILE,
                     dump_toml(researcher_config_document(federation_id, url, token_file),
                               header=f"fedcare settings of user {name!r} ({role}): give "
                                      "--federation this folder (paths relative to this "
                                      "file)").encode())
        entries.append({"name": name, "role": role, "site": None, "token_id": token_id,
                        "token_hash": hash_token(token)})
    atomic_write(root / "hub" / BOOTSTRAP_FILE,
                 json.dumps({"users": entries}, indent=2).encode(), mode=PRIVATE_FILE_MODE)


def bootstrap_users(root: str | Path) -> Path:
    """Give an existing federation made before hub users its first users (see
    :func:`_write_people`), replacing the shared researcher token: a new token in
    ``researcher/researcher.token`` (hand it to the researcher again), an admin folder, and
    the hashes in ``hub/users.bootstrap.json``; ``hub/researcher.token`` is deleted.
    Refused when the federation has its users already. Returns the admin folder."""
    from fedcare.hub.users import BOOTSTRAP_FILE

    federation = load_federation(root)
    if (federation.root / "hub" / BOOTSTRAP_FILE).exists() or (
            federation.root / "admin").exists():
        raise ProvisioningError(f"{federation.root} has its first users already "
                                f"(hub/{BOOTSTRAP_FILE}, admin/); add more with "
                                "`fedcare users add`")
    with exclusive_lock(federation.root):
        ca_cert = x509.load_pem_x509_certificate(federation.ca_cert_path.read_bytes())
        _write_people(federation.root, ca_cert, federation.federation_id,
                      federation.hub.url)
        (federation.root / "hub" / "researcher.token").unlink(missing_ok=True)
    return federation.root / "admin"


def _write_issued(folder: Path, final: Path, ca: Authority, federation_id: str, name: str,
                  public_key: ec.EllipticCurvePublicKey, url: str, valid_days: int,
                  now: datetime) -> SiteRecord:
    """The site's certificate and the public parts of its kit (no private key)."""
    not_before, not_after = certs.leaf_validity(ca.cert, now, valid_days)
    cert = certs.issue_site_certificate(ca, public_key, name, federation_id,
                                        not_before=not_before, not_after=not_after)
    atomic_write(folder / "site.crt", certs.certificate_pem(cert))
    atomic_write(folder / "ca.crt", certs.certificate_pem(ca.cert))
    atomic_write(folder / "node.toml",
                 dump_toml(node_config_document(federation_id, name, url),
                           header=f"fedcare startup kit for site {name} (paths relative to "
                                  "this file)").encode())
    return SiteRecord(name, cert.serial_number, certs.fingerprint(cert),
                      cert.not_valid_after_utc, final)


def _load_authority(federation: Federation) -> Authority:
    try:
        cert = x509.load_pem_x509_certificate(federation.ca_cert_path.read_bytes())
        key = serialization.load_pem_private_key(federation.ca_key_path.read_bytes(), None)
    except (OSError, ValueError, TypeError) as exc:
        raise ProvisioningError(f"cannot load the federation CA from "
                                f"{federation.ca_cert_path.parent}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or \
            key.public_key() != cert.public_key():
        raise ProvisioningError(f"{federation.ca_key_path} is not the key of "
                                f"{federation.ca_cert_path}")
    if certs.fingerprint(cert) != federation.ca_fingerprint:
        raise ProvisioningError(f"{federation.ca_cert_path} is not the CA recorded in "
                                f"{FEDERATION_FILE}")
    return Authority(key, cert)


def _current_crl_number(path: Path) -> int:
    try:
        return certs.crl_number(x509.load_pem_x509_crl(path.read_bytes()))
    except FileNotFoundError:
        return 0
    except ValueError as exc:
        raise CrlError(f"cannot read the revocation list {path}: {exc}") from exc


def _entries(revocations: Iterable[RevocationRecord]) -> list[RevokedEntry]:
    return [RevokedEntry(r.serial, r.revoked_at, r.reason) for r in revocations]


# --- federation.toml ------------------------------------------------------------------------

def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _save(federation: Federation, folder: Path | None = None) -> None:
    root = federation.root
    doc: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "federation_id": federation.federation_id,
        "created": _iso(federation.created),
        "ca": {"cert": _rel(federation.ca_cert_path, root),
               "key": _rel(federation.ca_key_path, root),
               "fingerprint_sha256": federation.ca_fingerprint,
               "not_after": _iso(federation.ca_not_after)},
        "hub": {"host": federation.hub.host, "port": federation.hub.port,
                "url": federation.hub.url, "dir": _rel(federation.hub.dir, root),
                "serial": f"{federation.hub.serial:x}",
                "fingerprint_sha256": federation.hub.fingerprint,
                "not_after": _iso(federation.hub.not_after)},
        "sites": [{"name": s.name, "serial": f"{s.serial:x}", "fingerprint_sha256":
                   s.fingerprint, "not_after": _iso(s.not_after), "kit": _rel(s.kit_dir, root)}
                  for s in federation.sites],
        "revoked": [{"site": r.site, "serial": f"{r.serial:x}", "revoked_at": _iso(r.revoked_at),
                     "reason": r.reason} for r in federation.revocations],
    }
    atomic_write((folder or root) / FEDERATION_FILE, dump_toml(doc, header=_HEADER).encode())


def _parse(doc: dict[str, Any], root: Path) -> Federation:
    if doc.get("format") != FORMAT_VERSION:
        raise ValueError(f"unsupported format {doc.get('format')!r}")

    def when(text: str) -> datetime:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            raise ValueError(f"time without time zone: {text!r}")
        return moment

    revocations = tuple(
        RevocationRecord(str(r["site"]), int(r["serial"], 16), when(r["revoked_at"]),
                         str(r.get("reason", ""))) for r in doc.get("revoked", []))
    by_serial = {r.serial: r for r in revocations}
    sites = []
    for s in doc.get("sites", []):
        serial = int(s["serial"], 16)
        sites.append(SiteRecord(certs.check_site_name(s["name"]), serial,
                                str(s["fingerprint_sha256"]), when(s["not_after"]),
                                root / s["kit"], by_serial.get(serial)))
    hub, ca = doc["hub"], doc["ca"]
    return Federation(
        root=root, federation_id=str(doc["federation_id"]), created=when(doc["created"]),
        ca_cert_path=root / ca["cert"], ca_key_path=root / ca["key"],
        ca_fingerprint=str(ca["fingerprint_sha256"]), ca_not_after=when(ca["not_after"]),
        hub=HubRecord(str(hub["host"]), int(hub["port"]), int(hub["serial"], 16),
                      str(hub["fingerprint_sha256"]), when(hub["not_after"]), root / hub["dir"]),
        sites=tuple(sites), revocations=revocations)
