"""Key custody (security audit F13): a site's key is made at the site, the coordinator's folder
holds only the CA's and the hub's keys, and nothing the coordinator hands out (a site's issued
folder, the researcher folder) holds a private key or a CKKS secret. Files are searched by
content, so a key under any name would be found."""

from __future__ import annotations

import stat
from pathlib import Path

from typer.testing import CliRunner

from fedcare.cli.main import app
from fedcare.demo.run import provision_demo
from fedcare.hub.provisioning import create_federation, load_federation
from fedcare.pki.trust import client_ssl_context, load_researcher_config
from tests.keyscan import find_secrets

runner = CliRunner()
ALLOWED = {"ca/ca.key": "PEM private key", "hub/hub.key": "PEM private key"}


def _assert_coordinator_holds_no_site_secret(root: Path) -> None:
    assert find_secrets(root) == ALLOWED
    fed = load_federation(root)
    handed_out = [root / "researcher", *(s.kit_dir for s in fed.sites)]
    for folder in handed_out:
        assert find_secrets(folder) == {}, folder


def test_the_scan_finds_keys_and_ckks_secrets_under_any_name(tmp_path: Path) -> None:
    from fedcare.pki import certs
    from fedcare.privacy.he import create_federation_context

    secret, public = create_federation_context()
    key = certs.new_private_key()
    (tmp_path / "notes.txt").write_bytes(certs.private_key_pem(key))
    (tmp_path / "blob.bin").write_bytes(b"junk" + secret)
    (tmp_path / "public.ctx").write_bytes(public)

    assert find_secrets(tmp_path) == {"blob.bin": "CKKS secret context",
                                      "notes.txt": "PEM private key"}


def test_cli_provisioning_keeps_every_site_key_at_its_site(tmp_path: Path) -> None:
    fed, kits = tmp_path / "coordinator" / "fed", tmp_path / "sites"

    steps = [["provision", "new", str(fed), "--hub-host", "127.0.0.1"]]
    for site in ("st-marys", "charite"):
        steps += [["node", "init", "--site", site, "--out", str(kits / site)],
                  ["provision", "add-site", str(fed), site, "--csr",
                   str(kits / site / "site.csr")],
                  ["node", "install-cert", "--kit", str(kits / site), "--from",
                   str(fed / "sites" / site)]]
    for args in steps:
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)

    _assert_coordinator_holds_no_site_secret(fed)
    for site in ("st-marys", "charite"):
        assert find_secrets(kits / site) == {"site.key": "PEM private key"}
        assert stat.S_IMODE((kits / site / "site.key").stat().st_mode) == 0o600
        client_ssl_context(kits / site)  # the kit works: key, certificate and CA agree
    researcher = load_researcher_config(fed / "researcher")
    assert researcher.hub_url == "https://127.0.0.1:8443" and researcher.ca.is_file()
    assert sorted(p.name for p in (fed / "researcher").iterdir()) == [
        "ca.crt", "researcher.token", "researcher.toml"]


def test_the_library_convenience_writes_keys_only_into_the_site_folders(tmp_path: Path) -> None:
    create_federation(tmp_path / "fed", hub_host="127.0.0.1", sites=["a", "b", "c"],
                      site_kits=tmp_path / "kits")

    _assert_coordinator_holds_no_site_secret(tmp_path / "fed")
    assert find_secrets(tmp_path / "kits") == {f"{s}/site.key": "PEM private key"
                                               for s in "abc"}


def test_the_demo_provisioning_leaves_no_hospital_secret_with_the_coordinator(
        tmp_path: Path) -> None:
    kits = provision_demo(tmp_path, ["hospital-1", "hospital-2", "hospital-3"], 8443)

    _assert_coordinator_holds_no_site_secret(tmp_path / "federation")
    assert kits == tmp_path / "site-kits"
    assert set(find_secrets(kits)) == {f"hospital-{i}/site.key" for i in (1, 2, 3)}


def test_install_cert_refuses_another_sites_certificate(tmp_path: Path) -> None:
    fed = create_federation(tmp_path / "fed", hub_host="127.0.0.1", sites=["a"],
                            site_kits=tmp_path / "kits")
    assert runner.invoke(app, ["node", "init", "--site", "b", "--out",
                               str(tmp_path / "b")]).exit_code == 0

    result = runner.invoke(app, ["node", "install-cert", "--kit", str(tmp_path / "b"),
                                 "--from", str(fed.site("a").kit_dir)])

    assert result.exit_code == 2
    assert "issued for another key" in " ".join(result.output.split())
    assert not (tmp_path / "b" / "site.crt").exists()


def test_a_researcher_needs_only_the_researcher_folder(tmp_path: Path) -> None:
    from fedcare.client import HubClient

    create_federation(tmp_path / "fed", hub_host="127.0.0.1", hub_port=9443)
    handed = tmp_path / "researcher"
    (tmp_path / "fed" / "researcher").rename(handed)  # what the researcher receives

    client = HubClient(handed, None, None, None)

    assert str(client.http.base_url) == "https://127.0.0.1:9443"
    token = (handed / "researcher.token").read_text().strip()
    assert client.http.headers["Authorization"] == f"Bearer {token}"
    assert find_secrets(handed) == {}
    # the coordinator may still use its own federation folder (its admin/ for `users`)
    admin = (tmp_path / "fed" / "admin" / "admin.token").read_text().strip()
    own = HubClient(tmp_path / "fed", None, None, None, user_folder="admin")
    assert own.http.headers["Authorization"] == f"Bearer {admin}"
