"""Federation provisioning: files, permissions, certificate fields, CRL, and the peer check."""

from __future__ import annotations

import ipaddress
import json
import ssl
import stat
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from fedcare.cli.provision import app
from fedcare.hub.provisioning import (
    CrlError,
    ExpiredCertificate,
    Federation,
    FederationExistsError,
    ProvisioningConfigError,
    ProvisioningError,
    RevokedCertificate,
    SiteExistsError,
    SiteNotFoundError,
    UnknownCertificate,
    add_site,
    client_ssl_context,
    create_federation,
    load_ca_certificate,
    load_federation,
    load_node_config,
    reload_crl,
    revoke_site,
    server_ssl_context,
    verify_peer,
)
from fedcare.pki import certs
from fedcare.pki.files import dump_toml

runner = CliRunner()


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _der(path: Path) -> bytes:
    return _cert(path).public_bytes(serialization.Encoding.DER)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _flat(text: str) -> str:
    """Rich wraps long messages at 80 columns; compare them with whitespace collapsed."""
    return " ".join(text.split())


def _ext(cert: x509.Certificate, kind: type) -> x509.ExtensionType:
    return cert.extensions.get_extension_for_class(kind).value


def _kit(fed: Federation, site: str) -> Path:
    """A site's own kit (with its key): beside the federation folder, never inside it."""
    return fed.root.parent / "kits" / site


def _new_fed(root: Path) -> Federation:
    return create_federation(root, hub_host="hub.example.org", sites=["charite", "st-marys"],
                             site_kits=root.parent / "kits")


def _csr(tmp: Path, site: str) -> bytes:
    from fedcare.pki.kit import init_site_kit

    return init_site_kit(tmp / "requests" / site, site).read_bytes()


@pytest.fixture
def fed(tmp_path: Path) -> Federation:
    """A fresh federation for tests that change it."""
    return _new_fed(tmp_path / "fed")


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    """One federation for the read-only tests (key generation and fsyncs add up)."""
    return _new_fed(tmp_path_factory.mktemp("shared") / "fed")


@pytest.fixture(scope="module")
def other_fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    """A second, unrelated federation (read-only)."""
    root = tmp_path_factory.mktemp("other")
    return create_federation(root / "fed", hub_host="localhost", sites=["charite"],
                             site_kits=root / "kits")


def _authority(fed: Federation) -> certs.Authority:
    key = serialization.load_pem_private_key(fed.ca_key_path.read_bytes(), None)
    return certs.Authority(key, _cert(fed.ca_cert_path))  # type: ignore[arg-type]


# --- files and permissions --------------------------------------------------------------------

def test_new_writes_the_layout_with_private_keys_0600_and_key_folders_0700(tmp_path: Path) -> None:
    result = runner.invoke(app, ["new", str(tmp_path / "fed"), "--hub-host", "127.0.0.1",
                                 "--valid-days", "30"])

    assert result.exit_code == 0, result.output
    root = tmp_path / "fed"
    for rel in ["federation.toml", "ca/ca.key", "ca/ca.crt", "hub/hub.key", "hub/hub.crt",
                "hub/ca.crt", "hub/crl.pem", "hub/hub.toml", "hub/users.bootstrap.json",
                "researcher/researcher.toml", "researcher/ca.crt", "researcher/researcher.token",
                "admin/researcher.toml", "admin/ca.crt", "admin/admin.token"]:
        assert (root / rel).is_file(), rel
    for key in ["ca/ca.key", "hub/hub.key", "hub/users.bootstrap.json",
                "researcher/researcher.token", "admin/admin.token"]:
        assert _mode(root / key) == 0o600, key
    # No CKKS context anywhere: the sites of a CKKS study make its key among themselves.
    assert not list(root.rglob("*.ctx"))
    # The hub's folder holds no usable token: the users' argon2 hashes only.
    assert not (root / "hub/researcher.token").exists()
    hub_files = b"".join(p.read_bytes() for p in (root / "hub").iterdir())
    for token_file in ("researcher/researcher.token", "admin/admin.token"):
        token = (root / token_file).read_bytes()
        assert token.startswith(b"fc_") and token not in hub_files
        assert token.split(b"_", 2)[2] not in hub_files
    bootstrap = json.loads((root / "hub/users.bootstrap.json").read_text())["users"]
    assert [(u["name"], u["role"]) for u in bootstrap] == [("admin", "admin"),
                                                           ("researcher", "researcher")]
    assert all(u["token_hash"].startswith("$argon2id$") for u in bootstrap)
    for folder in [root, root / "ca", root / "hub", root / "sites", root / "researcher",
                   root / "admin"]:
        assert _mode(folder) & 0o077 == 0, folder
    assert not [p for p in tmp_path.rglob("*") if ".staging" in p.name or p.suffix == ".tmp"]


def test_sites_made_at_once_keep_their_keys_in_their_own_kits(tmp_path: Path) -> None:
    fed = create_federation(tmp_path / "fed", hub_host="127.0.0.1", sites=["a", "b"],
                            site_kits=tmp_path / "kits")

    for name in ("a", "b"):
        issued, kit = fed.site(name).kit_dir, tmp_path / "kits" / name
        assert sorted(p.name for p in issued.iterdir()) == ["ca.crt", "node.toml", "site.crt"]
        assert _mode(kit / "site.key") == 0o600 and _mode(kit) == 0o700
        assert (kit / "site.crt").read_bytes() == (issued / "site.crt").read_bytes()
    assert not list(fed.root.rglob("site.key"))


def test_site_kits_inside_the_federation_folder_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ProvisioningConfigError, match="must not be inside the federation"):
        create_federation(tmp_path / "fed", hub_host="localhost", sites=["a"],
                          site_kits=tmp_path / "fed" / "kits")
    with pytest.raises(ProvisioningConfigError, match="sites need site_kits"):
        create_federation(tmp_path / "fed", hub_host="localhost", sites=["a"])
    assert list(tmp_path.iterdir()) == []


def test_every_key_matches_its_certificate(shared: Federation) -> None:
    for key_path, cert_path in [(shared.ca_key_path, shared.ca_cert_path),
                                (shared.hub.dir / "hub.key", shared.hub.dir / "hub.crt"),
                                (_kit(shared, "charite") / "site.key",
                                 shared.root / "sites/charite/site.crt")]:
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        assert key.public_key() == _cert(cert_path).public_key()


# --- certificate fields -----------------------------------------------------------------------

def test_ca_is_a_self_signed_root_that_can_only_sign_leaves(shared: Federation) -> None:
    ca = _cert(shared.ca_cert_path)

    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    usage = _ext(ca, x509.KeyUsage)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    ca.verify_directly_issued_by(ca)
    assert _cert(shared.hub.dir / "ca.crt") == ca == _cert(shared.root / "sites/charite/ca.crt")


def test_hub_certificate_is_a_server_cert_for_its_host_and_loopback(shared: Federation) -> None:
    hub = _cert(shared.hub.dir / "hub.crt")

    san = _ext(hub, x509.SubjectAlternativeName)
    assert list(_ext(hub, x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert san.get_values_for_type(x509.DNSName) == ["hub.example.org", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert not _ext(hub, x509.BasicConstraints).ca
    hub.verify_directly_issued_by(_cert(shared.ca_cert_path))


@pytest.mark.parametrize(("host", "dns", "ips"), [
    ("10.1.2.3", ["localhost"], ["10.1.2.3", "127.0.0.1"]),
    ("127.0.0.1", ["localhost"], ["127.0.0.1"]),
    ("LocalHost", ["localhost"], ["127.0.0.1"]),
    ("::1", ["localhost"], ["::1", "127.0.0.1"]),
])
def test_hub_san_handles_ip_and_loopback_hosts_without_duplicates(
        tmp_path: Path, host: str, dns: list[str], ips: list[str]) -> None:
    fed = create_federation(tmp_path / "f", hub_host=host)

    san = _ext(_cert(fed.hub.dir / "hub.crt"), x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == dns
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(i) for i in ips]


def test_ipv6_hub_url_is_bracketed(tmp_path: Path) -> None:
    fed = create_federation(tmp_path / "f", hub_host="::1", hub_port=9000, sites=["a"],
                            site_kits=tmp_path / "kits")
    assert load_node_config(fed.site("a").kit_dir).hub_url == "https://[::1]:9000"


def test_site_certificate_names_the_site_in_cn_and_san_uri(shared: Federation) -> None:
    site = _cert(shared.root / "sites/st-marys/site.crt")

    assert site.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "st-marys"
    assert _ext(site, x509.SubjectAlternativeName).get_values_for_type(
        x509.UniformResourceIdentifier) == ["fedcare://site/st-marys"]
    assert list(_ext(site, x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    usage = _ext(site, x509.KeyUsage)  # keyAgreement: CKKS secrets are sealed to this key
    assert usage.digital_signature and usage.key_agreement and not usage.key_cert_sign
    site.verify_directly_issued_by(_cert(shared.ca_cert_path))


def test_federation_toml_records_serials_and_fingerprints_of_the_files(shared: Federation) -> None:
    doc = tomllib.loads((shared.root / "federation.toml").read_text())

    assert [s["name"] for s in doc["sites"]] == ["charite", "st-marys"]
    for entry in doc["sites"]:
        cert = _cert(shared.root / entry["kit"] / "site.crt")
        assert entry["serial"] == f"{cert.serial_number:x}"
        assert entry["fingerprint_sha256"] == certs.fingerprint(cert)
        assert len(entry["fingerprint_sha256"]) == 64
    hub = _cert(shared.hub.dir / "hub.crt")
    assert doc["hub"]["fingerprint_sha256"] == certs.fingerprint(hub)
    assert doc["hub"]["url"] == "https://hub.example.org:8443"
    assert doc["revoked"] == [] and len(doc["federation_id"]) == 16


def test_node_and_hub_configs_point_into_their_own_folders(shared: Federation) -> None:
    node = load_node_config(_kit(shared, "charite"))

    assert node.site == "charite" and node.federation_id == shared.federation_id
    assert node.hub_url == "https://hub.example.org:8443"
    assert node.tls.key == (_kit(shared, "charite") / "site.key").resolve()


def test_federation_ids_are_random(shared: Federation, other_fed: Federation) -> None:
    assert shared.federation_id != other_fed.federation_id


# --- refusals and nothing half-written --------------------------------------------------------

def test_new_refuses_an_existing_federation_and_leaves_it_untouched(fed: Federation) -> None:
    before = (fed.root / "federation.toml").read_bytes()

    result = runner.invoke(app, ["new", str(fed.root), "--hub-host", "x.org"])

    assert result.exit_code == 2
    assert "already holds a federation" in _flat(result.stderr)
    assert (fed.root / "federation.toml").read_bytes() == before
    assert not (fed.root / "sites" / "z").exists()


def test_new_refuses_a_non_empty_folder_but_accepts_an_empty_one(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    (tmp_path / "empty").mkdir()

    with pytest.raises(FederationExistsError, match="not an empty folder"):
        create_federation(tmp_path / "full", hub_host="localhost")
    fed = create_federation(tmp_path / "empty", hub_host="localhost", sites=["a"],
                            site_kits=tmp_path / "kits")

    assert (tmp_path / "full").iterdir().__next__().name == "notes.txt"
    assert fed.site("a").kit_dir.is_dir()


@pytest.mark.parametrize(("args", "message"), [
    (["--hub-host", "not a host"], "invalid hub host"),
    (["--hub-port", "70000"], "hub port must be 1-65535"),
])
def test_invalid_inputs_exit_2_and_write_nothing(tmp_path: Path, args: list[str],
                                                 message: str) -> None:
    base = ["new", str(tmp_path / "fed"), "--hub-host", "localhost"]

    result = runner.invoke(app, base + args)

    assert result.exit_code == 2
    assert message in _flat(result.stderr)
    assert list(tmp_path.iterdir()) == []


def test_a_failure_midway_leaves_no_folder_behind(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(certs, "issue_hub_certificate", broken)

    with pytest.raises(ProvisioningError, match="disk full"):
        create_federation(tmp_path / "fed", hub_host="localhost")
    assert list(tmp_path.iterdir()) == []


# --- add-site ---------------------------------------------------------------------------------

def test_add_site_signs_the_sites_request_with_the_same_ca(fed: Federation,
                                                          tmp_path: Path) -> None:
    from fedcare.pki.kit import init_site_kit, install_site_certificate

    kit = tmp_path / "uppsala-kit"
    csr = init_site_kit(kit, "uppsala")  # at the site
    result = runner.invoke(app, ["add-site", str(fed.root), "uppsala", "--csr", str(csr)])

    assert result.exit_code == 0, result.output
    reloaded = load_federation(fed.root)
    record = reloaded.site("uppsala")
    cert = _cert(record.kit_dir / "site.crt")
    cert.verify_directly_issued_by(_cert(fed.ca_cert_path))
    assert record.fingerprint == certs.fingerprint(cert)
    assert sorted(p.name for p in record.kit_dir.iterdir()) == ["ca.crt", "node.toml",
                                                                "site.crt"]
    key = serialization.load_pem_private_key((kit / "site.key").read_bytes(), None)
    assert cert.public_key() == key.public_key()
    assert [s.name for s in reloaded.sites] == ["charite", "st-marys", "uppsala"]
    assert verify_peer(_der(record.kit_dir / "site.crt"), _cert(fed.ca_cert_path),
                       reload_crl(fed.hub.dir)) == "uppsala"
    assert install_site_certificate(kit, record.kit_dir).site == "uppsala"
    client_ssl_context(kit)


def test_add_site_refuses_a_request_for_another_name_or_a_forged_one(fed: Federation,
                                                                     tmp_path: Path) -> None:
    csr = _csr(tmp_path, "lund")
    with pytest.raises(ProvisioningConfigError, match="request is for site 'lund', not 'x'"):
        add_site(fed.root, "x", csr)
    # Lund's request with one bit of its signature flipped: whoever sent it does not hold
    # the key it asks a certificate for.
    der = x509.load_pem_x509_csr(csr).public_bytes(serialization.Encoding.DER)
    forged = x509.load_der_x509_csr(der[:-1] + bytes([der[-1] ^ 1]))
    with pytest.raises(ProvisioningConfigError, match="signature is invalid"):
        add_site(fed.root, "lund", forged.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(ProvisioningConfigError, match="not a PEM certificate signing request"):
        add_site(fed.root, "lund", b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n")
    assert [s.name for s in load_federation(fed.root).sites] == ["charite", "st-marys"]


def test_add_site_refuses_a_duplicate_name(fed: Federation, tmp_path: Path) -> None:
    before = (fed.root / "sites/charite/site.crt").read_bytes()
    csr_path = tmp_path / "charite.csr"
    csr_path.write_bytes(_csr(tmp_path, "charite"))

    result = runner.invoke(app, ["add-site", str(fed.root), "charite", "--csr", str(csr_path)])

    assert result.exit_code == 2 and "already has a certificate" in _flat(result.stderr)
    assert (fed.root / "sites/charite/site.crt").read_bytes() == before
    with pytest.raises(SiteExistsError):
        add_site(fed.root, "charite", csr_path.read_bytes())


def test_add_site_refuses_an_unrecorded_kit_folder(fed: Federation, tmp_path: Path) -> None:
    (fed.sites_dir / "ghost").mkdir()
    with pytest.raises(SiteExistsError, match=r"not in federation\.toml"):
        add_site(fed.root, "ghost", _csr(tmp_path, "ghost"))


def test_add_site_never_outlives_the_ca(fed: Federation, tmp_path: Path) -> None:
    record = add_site(fed.root, "long", _csr(tmp_path, "long"), valid_days=100_000)
    assert record.not_after == _cert(fed.ca_cert_path).not_valid_after_utc


def test_add_site_to_a_missing_federation_fails_clearly(tmp_path: Path) -> None:
    csr_path = tmp_path / "a.csr"
    csr_path.write_bytes(_csr(tmp_path, "a"))
    result = runner.invoke(app, ["add-site", str(tmp_path / "nowhere"), "a", "--csr",
                                 str(csr_path)])
    assert result.exit_code == 2 and "no federation in" in _flat(result.stderr)


# --- revoke -----------------------------------------------------------------------------------

def test_revoke_lists_the_serial_in_a_ca_signed_crl_and_records_it(fed: Federation) -> None:
    first = reload_crl(fed.hub.dir)

    result = runner.invoke(app, ["revoke", str(fed.root), "st-marys", "--reason",
                                 "key compromise"])

    assert result.exit_code == 0, result.output
    ca = _cert(fed.ca_cert_path)
    crl = reload_crl(fed.hub.dir)
    serial = fed.site("st-marys").serial
    entry = crl.get_revoked_certificate_by_serial_number(serial)
    assert entry is not None and len(list(crl)) == 1
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason \
        == x509.ReasonFlags.key_compromise
    assert crl.is_signature_valid(ca.public_key()) and crl.issuer == ca.subject
    assert certs.crl_number(crl) == certs.crl_number(first) + 1
    record = load_federation(fed.root).site("st-marys")
    assert record.revoked and record.revocation is not None
    assert record.revocation.reason == "key compromise"
    doc = tomllib.loads((fed.root / "federation.toml").read_text())
    assert doc["revoked"][0]["serial"] == f"{serial:x}"
    assert not load_federation(fed.root).site("charite").revoked


def test_revoking_twice_is_idempotent_with_a_clear_message(fed: Federation) -> None:
    revoke_site(fed.root, "charite", reason="left the consortium")
    crl_before = (fed.hub.dir / "crl.pem").read_bytes()
    toml_before = (fed.root / "federation.toml").read_bytes()

    result = runner.invoke(app, ["revoke", str(fed.root), "charite"])

    assert result.exit_code == 0
    assert "already revoked" in _flat(result.stdout)
    assert "nothing changed" in _flat(result.stdout)
    assert (fed.hub.dir / "crl.pem").read_bytes() == crl_before
    assert (fed.root / "federation.toml").read_bytes() == toml_before
    assert not revoke_site(fed.root, "charite").newly_revoked


def test_revoke_unknown_site_names_the_known_ones(fed: Federation) -> None:
    result = runner.invoke(app, ["revoke", str(fed.root), "nobody"])

    assert result.exit_code == 2
    assert "no site 'nobody'" in _flat(result.stderr)
    assert "charite, st-marys" in _flat(result.stderr)
    with pytest.raises(SiteNotFoundError):
        revoke_site(fed.root, "nobody")


def test_show_lists_sites_with_revocation(fed: Federation) -> None:
    revoke_site(fed.root, "st-marys")

    result = runner.invoke(app, ["show", str(fed.root)], env={"COLUMNS": "250"})

    assert result.exit_code == 0, result.output
    lines = {line.split("│")[1].strip(): line for line in result.stdout.splitlines()
             if line.count("│") > 2}
    assert fed.site("charite").fingerprint in lines["charite"]
    assert f"{fed.site('charite').serial:x}" in lines["charite"]
    assert "no" in lines["charite"].split("│")[-2]
    assert "yes" in lines["st-marys"].split("│")[-2]


# --- verify_peer ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trust(shared: Federation) -> tuple[x509.Certificate, x509.CertificateRevocationList]:
    return load_ca_certificate(shared.hub.dir), reload_crl(shared.hub.dir)


def test_verify_peer_accepts_a_site_certificate(shared: Federation, trust: tuple) -> None:
    assert verify_peer(_der(shared.root / "sites/charite/site.crt"), *trust) == "charite"


def test_verify_peer_rejects_a_certificate_from_another_ca(other_fed: Federation,
                                                           trust: tuple) -> None:
    with pytest.raises(UnknownCertificate, match="not issued by this federation's CA"):
        verify_peer(_der(other_fed.root / "sites/charite/site.crt"), *trust)


@pytest.mark.parametrize(("start", "end", "message"), [
    (-40, -10, "expired on"),
    (10, 40, "not valid before"),
])
def test_verify_peer_rejects_certificates_outside_their_validity(
        shared: Federation, trust: tuple, start: int, end: int, message: str) -> None:
    now = datetime.now(UTC)
    cert = certs.issue_site_certificate(
        _authority(shared), certs.new_private_key().public_key(), "charite", shared.federation_id,
        not_before=now + timedelta(days=start), not_after=now + timedelta(days=end))

    with pytest.raises(ExpiredCertificate, match=message) as info:
        verify_peer(cert.public_bytes(serialization.Encoding.DER), *trust)
    assert info.value.site == "charite"


def test_verify_peer_checks_validity_against_the_given_time(shared: Federation,
                                                            trust: tuple) -> None:
    der = _der(shared.root / "sites/charite/site.crt")
    with pytest.raises(ExpiredCertificate):
        verify_peer(der, *trust, now=datetime.now(UTC) + timedelta(days=400))


def test_verify_peer_rejects_a_revoked_certificate(fed: Federation) -> None:
    der = _der(fed.root / "sites/st-marys/site.crt")
    revoke_site(fed.root, "st-marys")

    with pytest.raises(RevokedCertificate, match="was revoked on") as info:
        verify_peer(der, load_ca_certificate(fed.hub.dir), reload_crl(fed.hub.dir))
    assert info.value.site == "st-marys"


def test_verify_peer_rejects_the_hub_certificate_used_as_a_client(shared: Federation,
                                                                  trust: tuple) -> None:
    with pytest.raises(UnknownCertificate, match="clientAuth"):
        verify_peer(_der(shared.hub.dir / "hub.crt"), *trust)


def test_verify_peer_rejects_the_ca_itself_and_garbage(shared: Federation, trust: tuple) -> None:
    with pytest.raises(UnknownCertificate, match="CA certificate"):
        verify_peer(_der(shared.ca_cert_path), *trust)
    with pytest.raises(UnknownCertificate, match=r"no valid X\.509"):
        verify_peer(b"\x30\x03junk", *trust)


def test_verify_peer_requires_the_site_uri(shared: Federation, trust: tuple) -> None:
    ca = _authority(shared)
    now = datetime.now(UTC)
    key = certs.new_private_key()
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "charite")]))
            .issuer_name(ca.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .sign(ca.key, certs.hashes.SHA256()))

    with pytest.raises(UnknownCertificate, match="fedcare://site/<name>"):
        verify_peer(cert.public_bytes(serialization.Encoding.DER), *trust)


def test_verify_peer_refuses_a_crl_from_another_ca(shared: Federation,
                                                   other_fed: Federation) -> None:
    with pytest.raises(CrlError):
        verify_peer(_der(shared.root / "sites/charite/site.crt"),
                    load_ca_certificate(shared.hub.dir), reload_crl(other_fed.hub.dir))


def test_reload_crl_picks_up_revocations_and_fails_closed(fed: Federation,
                                                          other_fed: Federation) -> None:
    ca = load_ca_certificate(fed.hub.dir)
    der = _der(fed.root / "sites/charite/site.crt")
    assert verify_peer(der, ca, reload_crl(fed.hub.dir)) == "charite"

    revoke_site(fed.root, "charite")
    with pytest.raises(RevokedCertificate):
        verify_peer(der, ca, reload_crl(fed.hub.dir))

    (fed.hub.dir / "crl.pem").write_bytes((other_fed.hub.dir / "crl.pem").read_bytes())
    with pytest.raises(CrlError, match="not signed by this federation's CA"):
        reload_crl(fed.hub.dir)
    (fed.hub.dir / "crl.pem").unlink()
    with pytest.raises(CrlError, match="cannot read"):
        reload_crl(fed.hub.dir)


# --- SSL contexts -----------------------------------------------------------------------------

def test_ssl_contexts_require_certificates_and_modern_tls(shared: Federation) -> None:
    server = server_ssl_context(shared.hub.dir)
    client = client_ssl_context(_kit(shared, "charite"))

    assert server.verify_mode == ssl.CERT_REQUIRED
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname
    assert server.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert client.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert len(client.get_ca_certs()) == 1  # the federation CA only, no system store


def test_a_kit_without_its_key_is_a_config_error(fed: Federation) -> None:
    (_kit(fed, "charite") / "site.key").unlink()
    with pytest.raises(ProvisioningConfigError, match="cannot load the site charite's TLS"):
        client_ssl_context(_kit(fed, "charite"))


def test_a_malformed_node_toml_names_the_key(fed: Federation) -> None:
    (_kit(fed, "charite") / "node.toml").write_text('site = "charite"\n')
    with pytest.raises(ProvisioningConfigError, match="missing key 'federation_id'"):
        load_node_config(_kit(fed, "charite"))


# --- the TOML writer --------------------------------------------------------------------------

_scalars = st.one_of(st.text(), st.integers(-(2**63), 2**63 - 1), st.booleans())
_keys = st.text(min_size=1, max_size=12)


@given(st.dictionaries(_keys, st.one_of(_scalars, st.lists(st.text(), max_size=3),
                                        st.dictionaries(_keys, _scalars, max_size=3),
                                        st.lists(st.dictionaries(_keys, _scalars, max_size=3),
                                                 min_size=1, max_size=2)), max_size=5),
       st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"))))
def test_dump_toml_round_trips_through_tomllib(doc: dict, header: str) -> None:
    assert tomllib.loads(dump_toml(doc, header=header)) == doc
