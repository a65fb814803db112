"""`fedcare node privacy`: a data steward sees what the site spent and whether the ledger was
tampered with."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from fedcare.cli.main import app
from fedcare.privacy.dp.ledger import LedgerEntry, PrivacyLedger, SitePrivacyPolicy

runner = CliRunner()


def _site(tmp_path: Path) -> tuple[Path, Path, PrivacyLedger]:
    (tmp_path / "d.csv").write_text("a,y\n1,0\n")
    (tmp_path / "privacy.toml").write_text("max_epsilon = 8.0\ndelta = 1e-5\n")
    conf = tmp_path / "node.toml"
    conf.write_text('[datasets.x]\npath = "d.csv"\n[approval]\nstudies = "any"\n'
                    '[privacy]\npolicy = "privacy.toml"\n')
    kit = tmp_path / "kit"
    (kit / "state").mkdir(parents=True)
    ledger = PrivacyLedger(kit / "state" / "privacy-ledger.jsonl",
                           SitePrivacyPolicy(8.0, 1e-5))
    return kit, conf, ledger


def test_shows_spent_budget_and_verifies_the_chain(tmp_path: Path) -> None:
    kit, conf, ledger = _site(tmp_path)
    for r in (1, 2):
        ledger.charge(LedgerEntry("s", r, f"s/r{r}/fit/a", "dp_fedavg_central", 2.0, 1.0, 1,
                                  1e-5))
    result = runner.invoke(app, ["node", "privacy", "--kit", str(kit), "--data", str(conf)])
    assert result.exit_code == 0, result.output
    assert "spent epsilon" in result.output and "verified" in result.output


def test_an_edited_entry_is_detected(tmp_path: Path) -> None:
    kit, conf, ledger = _site(tmp_path)
    for r in (1, 2):
        ledger.charge(LedgerEntry("s", r, f"s/r{r}/fit/a", "dp_fedavg_central", 2.0, 1.0, 1,
                                  1e-5))
    path = kit / "state" / "privacy-ledger.jsonl"
    path.write_text(path.read_text().replace('"noise_multiplier":2.0', '"noise_multiplier":20.0',
                                             1))
    result = runner.invoke(app, ["node", "privacy", "--kit", str(kit), "--data", str(conf)])
    assert result.exit_code == 1, result.output


def test_a_site_without_policy_is_told_so(tmp_path: Path) -> None:
    kit, conf, _ = _site(tmp_path)
    conf.write_text('[datasets.x]\npath = "d.csv"\n[approval]\nstudies = "any"\n')
    result = runner.invoke(app, ["node", "privacy", "--kit", str(kit), "--data", str(conf)])
    assert result.exit_code == 2 and "no [privacy] policy" in result.output
