"""A site's privacy ledger is anchored at a real hub (audit F9, ledger_tamper.sh): a ledger
cut at its end, deleted or rewritten - with the node's own copy of the anchor removed too - is
found by `fedcare node privacy` against the head the hub kept, and the node refuses to charge
it (so refuses the work) after a restart."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fedcare.node.ledger_anchor import ANCHOR_FILE
from fedcare.privacy.dp.ledger import LEDGER_HEAD_HEADER
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


# --- the API's side, in process (the fuzz suite's app, with site alpha's certificate) -------

@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.integration.test_api_fuzz import _hub

    with _hub(tmp_path_factory.mktemp("anchor-api")) as (asgi, _service):
        yield asgi


def _call(app: Any, method: str, path: str, **kw: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
            return await client.request(method, path, **kw)

    return asyncio.run(go())


def _hello(app: Any, head: str | None) -> httpx.Response:
    return _call(app, "POST", "/v1/node/hello",
                 json={"version": "0.1.0", "session": "s" * 8, "datasets": []},
                 headers={} if head is None else {LEDGER_HEAD_HEADER: head})


@pytest.mark.parametrize("head", ["", "abc", "3", "1:" + "g" * 64, "-1:" + "a" * 64,
                                  "0:" + "a" * 64, "9" * 30 + ":" + "a" * 64,
                                  "1:" + "a" * 64 + " x"])
def test_a_malformed_ledger_head_is_a_4xx_naming_the_header(app: Any, head: str) -> None:
    r = _hello(app, head)
    assert r.status_code == 422 and LEDGER_HEAD_HEADER.lower() in r.text.lower(), r.text
    r = _call(app, "POST", "/v1/node/reply", params={"task_id": "x/r1/fit/alpha"},
              content=b"garbage", headers={"Content-Type": "application/octet-stream",
                                           LEDGER_HEAD_HEADER: head})
    assert r.status_code == 422 and LEDGER_HEAD_HEADER.lower() in r.text.lower(), r.text


def test_hello_returns_the_longest_head_and_never_lowers_it(app: Any) -> None:
    three, one = "3:" + "c" * 64, "1:" + "a" * 64
    assert _call(app, "GET", "/v1/node/ledger-head").json() == {"site": "alpha",
                                                                "ledger_head": None}
    assert _hello(app, three).json()["ledger_head"] == three
    assert _hello(app, one).json()["ledger_head"] == three  # a cut ledger: refused
    assert _hello(app, None).json()["ledger_head"] == three
    assert _call(app, "GET", "/v1/node/ledger-head").json()["ledger_head"] == three
