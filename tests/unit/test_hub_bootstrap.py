"""The hub's first users: provisioning writes only hashes to the hub folder, the hub imports
them at start, and a hub folder from before users (plaintext shared token) is refused until
`fedcare provision users` replaced it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedcare.cli.main import app
from fedcare.core.errors import ConfigError
from fedcare.hub.auth import Principal, Role
from fedcare.hub.provisioning import ProvisioningError, bootstrap_users, create_federation
from fedcare.hub.server import build_server


def test_the_hub_imports_the_provisioned_users_at_start(tmp_path: Path) -> None:
    fed = create_federation(tmp_path / "fed", hub_host="127.0.0.1")
    _server, service = build_server(fed.hub.dir, tmp_path / "data", port=0)
    try:
        admin = (tmp_path / "fed" / "admin" / "admin.token").read_text().strip()
        researcher = (tmp_path / "fed" / "researcher" / "researcher.token").read_text().strip()
        assert service.users.verify(admin) == Principal("admin", Role.ADMIN)
        assert service.users.verify(researcher) == Principal("researcher", Role.RESEARCHER)
    finally:
        service.stop()
        service.db.dispose()


def _old_federation(tmp_path: Path) -> Path:
    """A federation as provisioning made it before users: the shared token in the hub
    folder and the researcher folder, no admin folder, no bootstrap file."""
    root = tmp_path / "fed"
    create_federation(root, hub_host="127.0.0.1")
    shutil.rmtree(root / "admin")
    (root / "hub" / "users.bootstrap.json").unlink()
    (root / "hub" / "researcher.token").write_text("the-old-shared-token")
    (root / "researcher" / "researcher.token").write_text("the-old-shared-token")
    return root


def test_a_hub_folder_with_the_shared_token_is_refused_with_what_to_do(tmp_path: Path) -> None:
    root = _old_federation(tmp_path)
    with pytest.raises(ConfigError, match="fedcare provision users") as refused:
        build_server(root / "hub", tmp_path / "data", port=0)
    assert "researcher.token" in str(refused.value)
    assert not (tmp_path / "data").exists()  # refused before anything was made


def test_provision_users_replaces_the_shared_token(tmp_path: Path) -> None:
    root = _old_federation(tmp_path)
    result = CliRunner().invoke(app, ["provision", "users", str(root)])
    assert result.exit_code == 0, result.output
    assert not (root / "hub" / "researcher.token").exists()
    new = (root / "researcher" / "researcher.token").read_text()
    assert new.startswith("fc_") and (root / "admin" / "admin.token").is_file()
    _server, service = build_server(root / "hub", tmp_path / "data", port=0)
    try:
        assert service.users.verify(new) == Principal("researcher", Role.RESEARCHER)
        assert service.users.verify("the-old-shared-token") is None
    finally:
        service.stop()
        service.db.dispose()
    with pytest.raises(ProvisioningError, match="first users already"):
        bootstrap_users(root)
