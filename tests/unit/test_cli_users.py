"""`fedcare users`: what is refused before anything is sent to the hub (a clear message and
exit code 2), and that no option takes a token on the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedcare.cli.main import app
from fedcare.hub.provisioning import create_federation

runner = CliRunner()


@pytest.fixture
def admin_dir(tmp_path: Path) -> Path:
    create_federation(tmp_path / "fed", hub_host="127.0.0.1", hub_port=1)  # nothing listens
    return tmp_path / "fed" / "admin"


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env={"FEDCARE_TOKEN": "", "COLUMNS": "200"})
    return result.exit_code, " ".join(result.output.split())


def test_an_unknown_role_is_refused_with_the_roles_there_are(admin_dir: Path) -> None:
    code, out = _run("users", "add", "bob", "--role", "superuser", "--federation",
                     str(admin_dir))
    assert code == 2
    assert "unknown role 'superuser'" in out and "admin, researcher, steward, auditor" in out


def test_a_steward_without_a_site_is_refused(admin_dir: Path) -> None:
    code, out = _run("users", "add", "sam", "--role", "steward", "--federation",
                     str(admin_dir))
    assert code == 2 and "steward speaks for one site" in out and "--site" in out


def test_a_site_for_another_role_and_a_bad_name_are_refused(admin_dir: Path) -> None:
    code, out = _run("users", "add", "rita", "--role", "researcher", "--site", "alpha",
                     "--federation", str(admin_dir))
    assert code == 2 and "only stewards have a site" in out
    code, out = _run("users", "add", "Rita Smith", "--role", "auditor", "--federation",
                     str(admin_dir))
    assert code == 2 and "user name 'Rita Smith'" in out


def test_out_never_overwrites_a_file(admin_dir: Path, tmp_path: Path) -> None:
    existing = tmp_path / "keep.txt"
    existing.write_text("precious")
    code, out = _run("users", "add", "dave", "--role", "auditor", "--out", str(existing),
                     "--federation", str(admin_dir))
    assert code == 2 and "exists" in out and existing.read_text() == "precious"


def test_an_unreachable_hub_is_a_failure_not_a_traceback(admin_dir: Path) -> None:
    code, out = _run("users", "list", "--federation", str(admin_dir))
    assert code == 1 and "cannot reach the hub" in out


def test_no_users_command_takes_a_token_argument(admin_dir: Path) -> None:
    code, out = _run("users", "list", "--token", "x", "--federation", str(admin_dir))
    assert code == 2 and "No such option" in out
