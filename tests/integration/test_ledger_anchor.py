"""A site's privacy ledger is anchored at a real hub (audit F9, ledger_tamper.sh): a ledger
cut at its end, deleted or rewritten - with the node's own copy of the anchor removed too - is
found by `fedcare node privacy` against the head the hub kept, and the node refuses to charge
it (so refuses the work) after a restart."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from fedcare.node.ledger_anchor import ANCHOR_FILE
from tests.integration.network import NetFederation, study_config
from tests.integration.network import net_fixture as net_fixture  # the "net" fixture

Net = Callable[..., NetFederation]


def _rechain(path: Path) -> None:
    """Every entry rewritten and the hash chain recomputed (without the site's key)."""
    out, prev = [], "0" * 64
    for line in path.read_bytes().splitlines():
        doc = json.loads(line)
        doc["noise_multiplier"], doc["prev"] = 100.0, prev
        new = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        out.append(new + b"\n")
        prev = hashlib.sha256(new).hexdigest()
    path.write_bytes(b"".join(out))


TAMPERINGS: dict[str, Callable[[Path], None]] = {
    "edit the entries": lambda p: p.write_bytes(p.read_bytes().replace(
        b'"noise_multiplier":0.0', b'"noise_multiplier":50.0')),
    "drop the last line": lambda p: p.write_bytes(
        b"".join(p.read_bytes().splitlines(keepends=True)[:-1])),
    "delete the file": lambda p: p.unlink(),
    "re-chain all lines": _rechain,
}


def test_the_hub_anchors_the_ledger_and_every_tampering_is_found(net: Net) -> None:
    fed = net(sites=("alpha", "beta"))
    (fed.root / "data" / "alpha-privacy.toml").write_text("max_epsilon = 50.0\ndelta = 1e-5\n")
    conf = fed.node_configs["alpha"]
    conf.write_text(conf.read_text() + '\n[privacy]\npolicy = "alpha-privacy.toml"\n')
    fed.start()
    fed.run_study(study_config(name="anchored", rounds=2), timeout=120)

    state = fed.root / "state" / "alpha"
    ledger = state / "privacy-ledger.jsonl"
    lines = ledger.read_bytes().splitlines()
    assert len(lines) == 2  # one charge (without DP) per fit task
    head = f"2:{hashlib.sha256(lines[-1]).hexdigest()}"

    def anchored() -> bool:
        with fed.site_client("alpha") as c:
            held = c.get("/v1/node/ledger-head").json()["ledger_head"]
        kept = (state / ANCHOR_FILE).exists() and json.loads(
            (state / ANCHOR_FILE).read_text())["head"]
        return held == head and kept == head

    fed.wait_until("the hub to anchor alpha's ledger head and alpha to keep it", anchored, 60)

    def privacy(*more: str) -> tuple[int, str]:
        done = fed.cli("node", "privacy", "--kit", str(fed.kit("alpha")), "--data", str(conf),
                       "--state-dir", str(state), *more)
        return done.returncode, done.stdout + done.stderr

    code, out = privacy()
    assert code == 0 and "anchored by the hub" in out, out

    original = ledger.read_bytes()
    backup = fed.root / "ledger-backup.jsonl"
    shutil.copy(ledger, backup)
    fed.kill_node("alpha")
    for name, tamper in TAMPERINGS.items():
        ledger.write_bytes(original)
        tamper(ledger)
        (state / ANCHOR_FILE).unlink(missing_ok=True)  # the local evidence goes too
        code, out = privacy()
        assert code == 1, f"{name}: {out}"
        assert "ledger verified" not in out, f"{name}: {out}"

    # The node restarts on the cut ledger: the hub answers its hello with the head it kept,
    # and the node refuses the next study's work rather than charge a reset budget.
    ledger.write_bytes(b"".join(original.splitlines(keepends=True)[:1]))
    fed.start_node("alpha")
    fed.wait_until("alpha to find its ledger cut", lambda: "fails verification" in
                   fed.nodes["alpha"].tail(20000), 60, procs=[fed.hub, fed.nodes["alpha"]])
    st = fed.run_study(study_config(name="after-cut", rounds=1), timeout=120)
    why = st["rounds"][0]["sites_failed"]["alpha"]
    assert "LedgerError" in why and "hub acknowledged 2" in why, why
    assert st["rounds"][0]["sites_completed"] == ["beta"]
    assert ledger.read_bytes() == original.splitlines(keepends=True)[0]  # nothing charged
