"""A site's startup kit, made AT the site: its private key never leaves its own folder.

Two steps, both run by the site (``fedcare node init`` and ``fedcare node install-cert``):

1. :func:`init_site_kit` creates the kit folder (0700), the site's EC P-256 key ``site.key``
   (0600 from the first byte) and a certificate signing request ``site.csr``. The site sends
   the CSR (public) to the federation's coordinator, who signs it with
   ``fedcare provision add-site FED NAME --csr site.csr``.
2. :func:`install_site_certificate` takes what the coordinator sends back (``site.crt``,
   ``ca.crt``, ``node.toml``: no secret) and puts it into the kit after checking that the
   certificate is for THIS key and THIS site and is signed by the CA it comes with.

Why: when the coordinator made every site's key (as fedcare did before), whoever ran
provisioning held every key and could impersonate any site (security audit F13). Now the
coordinator's folder only ever holds its own CA key and the hub's key.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedcare.pki import certs
from fedcare.pki.errors import ProvisioningConfigError, ProvisioningError
from fedcare.pki.files import atomic_write, make_private_dir, write_private_key
from fedcare.pki.trust import NODE_CONFIG_FILE, NodeConfig, certificate_site, load_node_config

KEY_FILE = "site.key"
CSR_FILE = "site.csr"
CERT_FILE = "site.crt"
CA_FILE = "ca.crt"
#: What the coordinator hands a site (``sites/NAME/`` of the federation folder).
ISSUED_FILES = (CERT_FILE, CA_FILE, NODE_CONFIG_FILE)


def init_site_kit(out: str | Path, site: str) -> Path:
    """Create ``out`` (absent or empty) with the site's new key and CSR; return the CSR path."""
    folder = Path(out).absolute()
    certs.check_site_name(site)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ProvisioningError(f"{folder} exists and is not an empty folder; a site kit is "
                                "made in a new folder (nothing was changed)")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        if folder.exists():
            os.chmod(folder, 0o700)
        else:
            make_private_dir(folder)
        key = certs.new_private_key()
        write_private_key(folder / KEY_FILE, certs.private_key_pem(key))
        csr = certs.build_site_csr(key, site)
        atomic_write(folder / CSR_FILE, csr.public_bytes(serialization.Encoding.PEM))
    except OSError as exc:
        raise ProvisioningError(f"cannot create the site kit in {folder}: {exc}") from exc
    return folder / CSR_FILE


def _load_site_key(kit: Path) -> ec.EllipticCurvePrivateKey:
    path = kit / KEY_FILE
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), None)
    except FileNotFoundError as exc:
        raise ProvisioningConfigError(f"{path} is missing: run `fedcare node init` to make the "
                                      "site's key first") from exc
    except (OSError, ValueError, TypeError) as exc:
        raise ProvisioningConfigError(f"cannot read the site key {path}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ProvisioningConfigError(f"{path} is not an EC key")
    return key


def install_site_certificate(kit: str | Path, issued: str | Path) -> NodeConfig:
    """Check the coordinator's ``issued`` folder against the kit's key and copy it in.

    Refused (nothing changed): a certificate for another key or another site than the kit's
    CSR, one not signed by the ``ca.crt`` beside it, a ``node.toml`` naming another site.
    """
    kit, issued = Path(kit).absolute(), Path(issued).absolute()
    key = _load_site_key(kit)
    try:
        blobs = {name: (issued / name).read_bytes() for name in ISSUED_FILES}
    except OSError as exc:
        raise ProvisioningConfigError(f"{issued} must hold {', '.join(ISSUED_FILES)} (what "
                                      f"`fedcare provision add-site` wrote): {exc}") from exc
    try:
        cert = x509.load_pem_x509_certificate(blobs[CERT_FILE])
        ca = x509.load_pem_x509_certificate(blobs[CA_FILE])
    except ValueError as exc:
        raise ProvisioningConfigError(f"cannot read the issued files in {issued}: {exc}") from exc
    # The issued node.toml through the kit-file schema, before anything is written: a
    # malformed one is refused here, not found by the node after the kit was changed.
    issued_config = load_node_config(issued)
    if cert.public_key() != key.public_key():
        raise ProvisioningConfigError(f"{issued / CERT_FILE} was issued for another key than "
                                      f"{kit / KEY_FILE}; ask the coordinator to sign this "
                                      f"kit's {CSR_FILE}")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ProvisioningConfigError(f"{issued / CERT_FILE} is not signed by the "
                                      f"{CA_FILE} it came with") from exc
    site = certificate_site(cert)
    wanted = _csr_site(kit)
    if site != wanted or issued_config.site != site:
        raise ProvisioningConfigError(f"the issued files name site {site!r} (node.toml: "
                                      f"{issued_config.site!r}) but this kit was made for "
                                      f"{wanted!r}")
    try:
        for name in ISSUED_FILES:
            atomic_write(kit / name, blobs[name])
    except OSError as exc:
        raise ProvisioningError(f"cannot write into {kit}: {exc}") from exc
    return load_node_config(kit)


def _csr_site(kit: Path) -> str:
    try:
        site, _ = certs.read_site_csr((kit / CSR_FILE).read_bytes())
    except OSError as exc:
        raise ProvisioningConfigError(f"{kit / CSR_FILE} is missing: this is not a folder made "
                                      "by `fedcare node init`") from exc
    return site
