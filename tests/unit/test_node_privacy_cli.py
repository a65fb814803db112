"""`fedcare node privacy`: a data steward sees what the site spent and whether the ledger was
tampered with - edited, cut at its end, deleted or rewritten (audit F9, ledger_tamper.sh)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedcare.cli.main import app
from fedcare.hub.provisioning import create_federation
from fedcare.node.ledger_anchor import ANCHOR_FILE, LedgerAnchor, ledger_key
from fedcare.privacy.dp.ledger import LedgerEntry, PrivacyLedger, SitePrivacyPolicy
from tests.unit.test_dp_ledger import TAMPERINGS

runner = CliRunner()


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A provisioned federation (real site key and certificate); its hub is never started,
    and its port is closed: the CLI cannot reach a hub."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = tmp_path_factory.mktemp("fed")
    create_federation(base / "fed", hub_host="127.0.0.1", hub_port=port, sites=["alpha"],
                      site_kits=base / "kits")
    return base / "kits"


def _site(tmp_path: Path, federation: Path) -> tuple[Path, Path, PrivacyLedger]:
    (tmp_path / "d.csv").write_text("a,y\n1,0\n")
    (tmp_path / "privacy.toml").write_text("max_epsilon = 8.0\ndelta = 1e-5\n")
    conf = tmp_path / "node.toml"
    conf.write_text('[datasets.x]\npath = "d.csv"\n[approval]\nstudies = "any"\n'
                    '[privacy]\npolicy = "privacy.toml"\n')
    kit = tmp_path / "kit"
    shutil.copytree(federation / "alpha", kit)
    (kit / "state").mkdir()
    ledger = PrivacyLedger(kit / "state" / "privacy-ledger.jsonl",
                           SitePrivacyPolicy(50.0, 1e-5), key=ledger_key(kit))
    return kit, conf, ledger


def _charge(ledger: PrivacyLedger, rounds: tuple[int, ...] = (1, 2, 3)) -> None:
    for r in rounds:
        ledger.charge(LedgerEntry("s", r, f"s/r{r}/fit/a", "dp_fedavg_distributed", 1.0, 1.0,
                                  1, 1e-5))


def _privacy(kit: Path, conf: Path, *more: str) -> tuple[int, str]:
    result = runner.invoke(app, ["node", "privacy", "--kit", str(kit), "--data", str(conf),
                                 *more], env={"COLUMNS": "300", "NO_COLOR": "1"})
    return result.exit_code, result.output


def test_shows_spent_budget_and_verifies_chain_and_signatures(tmp_path: Path,
                                                              federation: Path) -> None:
    kit, conf, ledger = _site(tmp_path, federation)
    _charge(ledger, (1, 2))
    code, out = _privacy(kit, conf)
    assert code == 0, out
    assert "spent epsilon" in out and "ledger verified" in out and "signatures" in out
    # no hub to ask: it says what it could check, and what it could not
    assert "could not ask the hub" in out and "found only against the hub's anchor" in out


@pytest.mark.parametrize("tamper", list(TAMPERINGS))
def test_every_audit_tampering_exits_1_against_the_kept_anchor(tmp_path: Path,
                                                               federation: Path,
                                                               tamper: str) -> None:
    kit, conf, ledger = _site(tmp_path, federation)
    _charge(ledger)
    LedgerAnchor(ledger, kit / "state" / ANCHOR_FILE).acknowledged(str(ledger.head()))
    assert _privacy(kit, conf, "--offline")[0] == 0
    TAMPERINGS[tamper](ledger.path)
    code, out = _privacy(kit, conf, "--offline")
    assert code == 1, out
    assert "ledger verified" not in out


def test_an_edited_entry_is_detected_without_any_anchor(tmp_path: Path,
                                                        federation: Path) -> None:
    kit, conf, ledger = _site(tmp_path, federation)
    _charge(ledger, (1, 2))
    path = kit / "state" / "privacy-ledger.jsonl"
    path.write_text(path.read_text().replace('"noise_multiplier":1.0', '"noise_multiplier":20.0',
                                             1))
    code, out = _privacy(kit, conf, "--offline")
    assert code == 1 and "signature does not verify" in out, out


def test_a_steward_signs_an_old_unsigned_ledger(tmp_path: Path, federation: Path) -> None:
    kit, conf, ledger = _site(tmp_path, federation)
    _charge(ledger, (1, 2))
    out, prev = [], "0" * 64
    for line in ledger.path.read_text().splitlines():  # rewritten in the old format
        doc = json.loads(line)
        del doc["sig"]
        doc["prev"] = prev
        out.append(json.dumps(doc, sort_keys=True, separators=(",", ":")))
        prev = hashlib.sha256(out[-1].encode()).hexdigest()
    ledger.path.write_text("".join(f"{line}\n" for line in out))
    code, out = _privacy(kit, conf, "--offline")
    assert code == 1 and "unsigned" in out, out
    code, out = _privacy(kit, conf, "--offline", "--sign-unsigned")
    assert code == 0 and "signed 2 unsigned ledger entries" in out, out
    assert _privacy(kit, conf, "--offline")[0] == 0


def test_a_site_without_policy_is_told_so(tmp_path: Path, federation: Path) -> None:
    kit, conf, _ = _site(tmp_path, federation)
    conf.write_text('[datasets.x]\npath = "d.csv"\n[approval]\nstudies = "any"\n')
    code, out = _privacy(kit, conf)
    assert code == 2 and "no [privacy] policy" in out


def test_a_kit_without_its_certificate_is_a_clear_error(tmp_path: Path,
                                                        federation: Path) -> None:
    kit, conf, _ = _site(tmp_path, federation)
    (kit / "site.crt").unlink()
    code, out = _privacy(kit, conf, "--offline")
    assert code == 2 and "cannot load the site's ledger key" in out, out
