"""The output airlock over real HTTPS between a real hub and real nodes (issue 13, point 7):
"An export with a small cell, or without the quorum, cannot be downloaded by any role."

One study runs; the hub's operator drops a results table with a small cell into the study's
folder (as an analysis step would). Then, as each kind of user with their own token: the
small-cell table is refused by the checks and nobody gets it; the model waits for every
participating site's steward, nobody gets it before, a steward of another site cannot
decide and no site decides twice; after the quorum only the requester downloads, and gets
exactly the bytes that were digested at request time (also through `fedcare export`); every
step is in the hub's signed audit trail and `fedcare audit verify` passes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx

from fedcare.governance.audit_log import read
from tests.integration.network import SITES, NetFederation, study_config
from tests.integration.network import net_fixture as net_fixture  # the "net" fixture

Net = Callable[..., NetFederation]


def _user(fed: NetFederation, name: str, role: str, site: str | None = None) -> httpx.Client:
    """A new hub user (made by the admin over the API) and an HTTPS client with their token."""
    admin = httpx.Client(base_url=fed.url, verify=fed._ca_context(), timeout=30.0,
                         headers={"Authorization": f"Bearer {fed.admin_token}"})
    r = admin.post("/v1/users", json={"name": name, "role": role, "site": site})
    assert r.status_code == 201, r.text
    return httpx.Client(base_url=fed.url, verify=fed._ca_context(), timeout=30.0,
                        headers={"Authorization": f"Bearer {r.json()['token']}"})


def _nobody_downloads(clients: dict[str, httpx.Client], export_id: str) -> None:
    for who, client in clients.items():
        r = client.get(f"/v1/exports/{export_id}/download")
        assert r.status_code in (403, 404, 409), (who, r.status_code, r.text)
        assert r.status_code != 200 and not r.content.startswith(b"group"), who


def test_nothing_leaves_without_clean_checks_and_the_stewards_quorum(net: Net) -> None:
    fed = net().start()
    study_id = fed.submit(study_config(name="airlock", rounds=2))
    assert fed.wait_study(study_id)["status"] == "completed"
    folder = fed.hub_dir / "data" / "studies" / study_id
    (folder / "counts.csv").write_text("ward,deaths\nA,41\nB,3\nC,0\n")
    model = (folder / "model.safetensors").read_bytes()

    researcher = fed.client()
    stewards = {site: _user(fed, f"steward-{site}", "steward", site) for site in SITES}
    outsider = _user(fed, "steward-zeta", "steward", "zeta")
    clients = {"researcher": researcher, **stewards, "zeta": outsider,
               "auditor": _user(fed, "audrey", "auditor"),
               "admin": _user(fed, "root2", "admin"),
               "other researcher": _user(fed, "bob", "researcher")}

    # Another researcher cannot even ask (the study does not exist for them).
    r = clients["other researcher"].post(f"/v1/studies/{study_id}/exports",
                                         json={"artifact": "model.safetensors", "reason": "x"})
    assert r.status_code == 404, r.text

    # A table with a small cell: refused by the checks, for good, for everyone.
    r = researcher.post(f"/v1/studies/{study_id}/exports",
                        json={"artifact": "counts.csv", "reason": "table 2 of the paper"})
    assert r.status_code == 201, r.text
    small = r.json()
    assert small["status"] == "refused_by_checks" and "row 3, 'deaths'" in small["refusals"][0]
    for site, steward in stewards.items():
        r = steward.post(f"/v1/exports/{small['id']}/decision",
                         json={"decision": "approve", "reason": "ok"})
        assert r.status_code == 409, (site, r.text)
    _nobody_downloads(clients, small["id"])

    # The model: flagged (no DP), waiting for every participating site.
    r = researcher.post(f"/v1/studies/{study_id}/exports",
                        json={"artifact": "model.safetensors", "reason": "validation"})
    export = r.json()
    assert export["status"] == "awaiting_stewards" and export["quorum"] == len(SITES)
    assert export["digest"] == hashlib.sha256(model).hexdigest()
    assert any("without differential privacy" in f for f in export["flags"])
    r = outsider.post(f"/v1/exports/{export['id']}/decision",
                      json={"decision": "approve", "reason": "not mine"})
    assert r.status_code in (403, 404), r.text
    for site in SITES[:-1]:
        r = stewards[site].post(f"/v1/exports/{export['id']}/decision",
                                json={"decision": "approve", "reason": "aggregate model"})
        assert r.status_code == 200, r.text
        again = stewards[site].post(f"/v1/exports/{export['id']}/decision",
                                    json={"decision": "reject", "reason": "changed my mind"})
        assert again.status_code == 409 and "already" in again.text
        _nobody_downloads(clients, export["id"])
    r = researcher.get(f"/v1/exports/{export['id']}/download")
    assert r.status_code == 409 and f"{len(SITES) - 1} of {len(SITES)}" in r.text

    # Steward views: their site's requests; the auditor sees all; bob sees none.
    assert {e["id"] for e in stewards[SITES[0]].get("/v1/exports").json()} == {
        small["id"], export["id"]}
    assert outsider.get("/v1/exports").json() == []
    assert clients["other researcher"].get(f"/v1/exports/{export['id']}").status_code == 404
    assert len(clients["auditor"].get("/v1/exports").json()) == 2

    # The last steward, through the CLI; then the requester downloads with the CLI.
    env = {k: v for k, v in os.environ.items() if k not in ("FEDCARE_TOKEN",)}
    last = stewards[SITES[-1]].headers["Authorization"].split()[1]
    approve = _fedcare(fed, env, last, "export", "approve", export["id"], "--why", "fine")
    assert approve.returncode == 0 and "approved" in approve.stdout, approve.stdout
    for who in ("admin", "auditor", *SITES, "zeta", "other researcher"):
        r = clients[who].get(f"/v1/exports/{export['id']}/download")
        assert r.status_code in (403, 404), (who, r.status_code, r.text)
    out = fed.root / "released" / "model.safetensors"
    got = _fedcare(fed, env, fed.token, "export", "download", export["id"], "--out", str(out))
    assert got.returncode == 0, got.stdout + got.stderr
    assert out.read_bytes() == model
    r = researcher.get(f"/v1/exports/{export['id']}")
    assert r.json()["status"] == "downloaded" and r.json()["approvals"] == len(SITES)

    # Every step in the signed audit trail, with the digest and never the content.
    hub_data = fed.hub_dir / "data"
    ok = fed.cli("audit", "verify", "--hub-dir", str(hub_data))
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stdout + ok.stderr
    entries = [e for e in read(hub_data / "audit" / "hub-audit.jsonl")
               if e.kind.value.startswith("export_")]
    kinds = [(e.kind.value, e.subject) for e in entries]
    assert kinds == [("export_requested", small["id"]), ("export_checked", small["id"]),
                     ("export_requested", export["id"]), ("export_checked", export["id"]),
                     *[("export_decided", export["id"])] * len(SITES),
                     ("export_approved", export["id"]), ("export_downloaded", export["id"])]
    assert all(e.details["digest"] == export["digest"] for e in entries[2:])
    assert "A,41" not in (hub_data / "audit" / "hub-audit.jsonl").read_text()

    # The other commands: a refused request exits 1 with the findings; a request needs its
    # reason; a steward's rejection is final; `list` and `show` are scoped to the caller.
    me = fed.token
    refused = _fedcare(fed, env, me, "export", "request", study_id, "counts.csv", "--why", "t2")
    assert refused.returncode == 1 and "refused:" in refused.stdout, refused.stdout
    no_why = _fedcare(fed, env, me, "export", "request", study_id, "model.safetensors")
    assert no_why.returncode == 2 and "--why" in no_why.stderr
    again = researcher.post(f"/v1/studies/{study_id}/exports",
                            json={"artifact": "model.safetensors", "reason": "v2"}).json()
    beta = stewards[SITES[1]].headers["Authorization"].split()[1]
    rejected = _fedcare(fed, env, beta, "export", "reject", again["id"], "--why", "too early")
    assert rejected.returncode == 0 and "rejected" in rejected.stdout, rejected.stdout
    late = _fedcare(fed, env, last, "export", "approve", again["id"], "--why", "ok")
    assert late.returncode == 2 and "409" in late.stderr, late.stderr
    shown = _fedcare(fed, env, me, "export", "show", again["id"])
    assert "too early" in shown.stdout and "rejected by the steward" in shown.stdout
    listed = _fedcare(fed, env, me, "export", "list")
    assert all(i in listed.stdout for i in (small["id"], export["id"], again["id"]))
    assert again["id"] in _fedcare(fed, env, last, "export", "list").stdout
    zeta = outsider.headers["Authorization"].split()[1]
    assert again["id"] not in _fedcare(fed, env, zeta, "export", "list").stdout


def _fedcare(fed: NetFederation, env: dict[str, str], token: str, *args: str
             ) -> subprocess.CompletedProcess[str]:
    """``fedcare ARGS`` as the user holding ``token`` (from the environment, never an
    argument)."""
    full: dict[str, Any] = {**env, "NO_COLOR": "1", "COLUMNS": "200", "FEDCARE_TOKEN": token,
                            "FEDCARE_FEDERATION": str(fed.researcher_dir)}
    return subprocess.run([sys.executable, "-m", "fedcare.cli.main", *args],
                          capture_output=True, text=True, timeout=120, cwd=fed.root, env=full)
