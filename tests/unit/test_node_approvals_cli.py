"""``fedcare node studies|approve|reject|revoke`` and ``fedcare study hash`` as a steward and
a researcher type them: the table, the prefix, and a clear error with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from fedcare.cli.main import app
from fedcare.config import content_hash, parse_config
from fedcare.node.approvals import ApprovalStore

CONFIG = {"study": {"name": "sepsis", "rounds": 2},
          "data": {"source": "federation", "dataset": "breast", "label": "y",
                   "features": ["f0", "f1"], "standardize": False}}
runner = CliRunner()


def test_the_steward_lists_reads_and_decides(tmp_path: Path) -> None:
    kit = tmp_path / "kit"
    digest = content_hash(parse_config(CONFIG))
    ApprovalStore.in_state_dir(kit / "state").saw("s1", digest, "sepsis", CONFIG, ["a", "b"])

    listed = runner.invoke(app, ["node", "studies", "--kit", str(kit)])
    assert listed.exit_code == 0 and digest[:16] in listed.output and "pending" in listed.output
    shown = runner.invoke(app, ["node", "studies", "--kit", str(kit), "--show", digest[:8]])
    assert shown.exit_code == 0 and '"dataset": "breast"' in shown.output
    no_why = runner.invoke(app, ["node", "reject", digest[:8], "--kit", str(kit)])
    assert no_why.exit_code == 2
    ok = runner.invoke(app, ["node", "approve", digest[:8], "--kit", str(kit)])
    assert ok.exit_code == 0 and f"study {digest} approved" in ok.output
    again = runner.invoke(app, ["node", "revoke", digest[:8], "--kit", str(kit),
                                "--why", "consent withdrawn"])
    assert again.exit_code == 0
    listed = runner.invoke(app, ["node", "studies", "--kit", str(kit), "--json"])
    (row,) = json.loads(listed.output)
    assert (row["hash"], row["decision"], row["reason"]) == (digest, "revoked",
                                                             "consent withdrawn")


def test_a_folder_without_a_node_and_a_bad_hash_are_clear_errors(tmp_path: Path) -> None:
    r = runner.invoke(app, ["node", "approve", "abcdef0123", "--kit", str(tmp_path)])
    assert r.exit_code == 2
    ApprovalStore.in_state_dir(tmp_path / "state")
    for bad in ("abc", "not-a-hash!", "0123456789ab"):
        r = runner.invoke(app, ["node", "approve", bad, "--kit", str(tmp_path)])
        assert r.exit_code == 2, (bad, r.output)


def test_study_hash_prints_what_the_sites_approve(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    r = runner.invoke(app, ["study", "hash", str(path)])
    assert r.exit_code == 0 and r.output.strip() == content_hash(parse_config(CONFIG))
    r = runner.invoke(app, ["study", "hash", str(tmp_path / "missing.toml")])
    assert r.exit_code == 2
