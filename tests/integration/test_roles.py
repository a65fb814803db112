"""People and roles at a real hub over HTTPS (issue 13, point 1): the full role x endpoint
matrix, who sees which study and model, revocation (at once, and across a restart), the
`fedcare users` commands and their audit entries.

The matrix is built from the app's own routes: every route that is not a node route (mutual
TLS) or ``/v1/health`` must declare its roles with ``allow(...)`` and appear in
:data:`EXPECTED`, so a new endpoint without a declaration fails here. For each one: 401
without a token, with a garbage token and with a revoked user's token; 403 with every role
it does not admit; the expected answer with every role it admits.
"""

from __future__ import annotations

import itertools
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from fedcare.hub.auth import Role, roles_of
from tests.integration.network import NetFederation, study_config

pytestmark = pytest.mark.slow

A, R, S, U = Role.ADMIN, Role.RESEARCHER, Role.STEWARD, Role.AUDITOR
EVERYONE = frozenset(Role)

#: (method, route) -> {admitted role: expected status}. Every user route must be here.
EXPECTED: dict[tuple[str, str], dict[Role, int]] = {
    ("POST", "/v1/studies"): {R: 201},
    ("GET", "/v1/studies"): dict.fromkeys(EVERYONE, 200),
    ("GET", "/v1/studies/{study_id}"): dict.fromkeys(EVERYONE, 200),
    ("GET", "/v1/studies/{study_id}/events"): dict.fromkeys(EVERYONE, 200),
    # the airlock (docs/governance.md, "Airlock"); a study's files have no other route
    ("POST", "/v1/studies/{study_id}/exports"): {R: 201},
    ("GET", "/v1/exports"): dict.fromkeys(EVERYONE, 200),
    ("GET", "/v1/exports/{export_id}"): dict.fromkeys(EVERYONE, 200),
    ("POST", "/v1/exports/{export_id}/decision"): {S: 200},
    # not approved: the requester hears what is missing (409), anyone else 403
    ("GET", "/v1/exports/{export_id}/download"): {R: 409, A: 403, S: 403, U: 403},
    # not paused: 409 says the role passed and the hub looked at the study
    ("POST", "/v1/studies/{study_id}/resume"): {R: 409, A: 409},
    # the harness's plain CSV datasets have no quality report: 404 after the role check
    ("GET", "/v1/datasets/{name}/quality"): dict.fromkeys(EVERYONE, 404),
    ("GET", "/v1/sites"): dict.fromkeys(EVERYONE, 200),
    ("GET", "/v1/models"): dict.fromkeys(EVERYONE, 200),
    ("GET", "/v1/models/{entry_id}"): dict.fromkeys(EVERYONE, 200),
    ("GET", "/v1/models/{entry_id}/card"): dict.fromkeys(EVERYONE, 200),
    # the hub's signed audit trail, for auditors (hub/audit_api.py)
    ("GET", "/v1/audit/key"): {A: 200, U: 200},
    ("GET", "/v1/audit/log"): {A: 200, U: 200},
    ("POST", "/v1/users"): {A: 201},
    ("GET", "/v1/users"): {A: 200},
    ("DELETE", "/v1/users/{name}"): {A: 200},
    ("GET", "/openapi.json"): dict.fromkeys(EVERYONE, 200),
    ("GET", "/docs"): dict.fromkeys(EVERYONE, 200),
    ("GET", "/redoc"): dict.fromkeys(EVERYONE, 200),
}
PUBLIC = {("GET", "/v1/health")}


class Hub:
    """The module's federation, its users' tokens and a finished study of researcher A."""

    def __init__(self, fed: NetFederation) -> None:
        self.fed = fed
        self.http = httpx.Client(base_url=fed.url, verify=fed._ca_context(), timeout=60.0)
        self.tokens: dict[str, str] = {"admin": fed.admin_token, "researcher": fed.token}
        self.names = itertools.count()
        self.study_id = ""
        self.model_id = ""
        self.export_id = ""

    def export(self) -> str:
        """A new export request of the study's model by researcher A (awaiting stewards)."""
        r = self.as_("researcher", "POST", f"/v1/studies/{self.study_id}/exports",
                     json=EXPORT)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def as_(self, user: str | None, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {} if user is None else {"Authorization": f"Bearer {self.tokens[user]}"}
        return self.http.request(method, path, headers=headers, **kw)

    def raw(self, token: str, method: str, path: str, **kw: Any) -> httpx.Response:
        return self.http.request(method, path, headers={"Authorization": f"Bearer {token}"},
                                 **kw)

    def add(self, name: str, role: Role, site: str | None = None) -> str:
        r = self.as_("admin", "POST", "/v1/users",
                     json={"name": name, "role": role.value, "site": site})
        assert r.status_code == 201, r.text
        self.tokens[name] = r.json()["token"]
        return self.tokens[name]


EXPORT = {"artifact": "model.safetensors", "reason": "the role matrix"}
#: The user of each role the matrix calls with (stewards: of a participating site).
ACTING = {A: "admin", R: "researcher", S: "sam", U: "audrey"}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    fed = NetFederation(tmp_path_factory.mktemp("roles"), sites=("alpha", "beta"))
    try:
        fed.start(api_docs=True)
        h = Hub(fed)
        h.add("rita", Role.RESEARCHER)          # researcher B
        h.add("audrey", Role.AUDITOR)
        h.add("sam", Role.STEWARD, "alpha")     # a site of A's study
        h.add("zed", Role.STEWARD, "zeta")      # a site in no study
        h.add("gone", Role.RESEARCHER)
        assert h.as_("gone", "GET", "/v1/sites").status_code == 200  # verified and cached
        assert h.as_("admin", "DELETE", "/v1/users/gone").status_code == 200
        h.study_id = fed.run_study(study_config(name="a-study", rounds=1))["study_id"]
        models = h.as_("admin", "GET", "/v1/models").json()
        h.model_id = next(m["id"] for m in models if m["study_id"] == h.study_id)
        h.export_id = h.export()
        yield h
        h.http.close()
    finally:
        fed.close()


def _user_routes() -> dict[tuple[str, str], frozenset[Role] | None]:
    """Every route of the hub's app but the node routes and /v1/health, with the roles its
    ``allow`` dependency admits (None: it declares none)."""
    from fedcare.hub.api import PeerTrust, create_app
    from fedcare.hub.provisioning import create_federation
    from fedcare.hub.service import HubService

    with _tmp() as root:
        fed = create_federation(root / "fed", hub_host="127.0.0.1")
        service = HubService(root / "data", revocation=PeerTrust(fed.hub.dir))
        try:
            app = create_app(service, PeerTrust(fed.hub.dir), api_docs=True)
        finally:
            service.stop()
            service.db.dispose()
    found: dict[tuple[str, str], frozenset[Role] | None] = {}
    for route in app.routes:
        if not isinstance(route, APIRoute) or route.path.startswith("/v1/node/"):
            continue
        declared = [roles_of(d.call) for d in _flat(route.dependant)
                    if roles_of(d.call) is not None]
        for method in route.methods:
            if (method, route.path) in PUBLIC:
                assert not declared, f"{route.path} is public but declares roles"
                continue
            assert len(declared) <= 1, f"{method} {route.path} declares roles twice"
            found[(method, route.path)] = declared[0] if declared else None
    return found


def _flat(dependant: Any) -> Iterator[Any]:
    for d in dependant.dependencies:
        yield d
        yield from _flat(d)


class _tmp:
    def __enter__(self) -> Path:
        import tempfile

        self._dir = tempfile.TemporaryDirectory()
        return Path(self._dir.name)

    def __exit__(self, *exc: object) -> None:
        self._dir.cleanup()


def test_every_user_route_declares_the_roles_of_the_matrix() -> None:
    routes = _user_routes()
    undeclared = sorted(f"{m} {p}" for (m, p), roles in routes.items() if roles is None)
    assert not undeclared, f"routes without allow(...): {undeclared}"
    assert set(routes) == set(EXPECTED), (
        f"not in EXPECTED: {sorted(set(routes) - set(EXPECTED))}; "
        f"gone from the app: {sorted(set(EXPECTED) - set(routes))}")
    for key, roles in routes.items():
        assert roles == frozenset(EXPECTED[key]), (key, roles)


def _request(h: Hub, method: str, route: str) -> tuple[str, dict[str, Any]]:
    """A concrete path and body for ``route`` (fresh names where the call changes state)."""
    n = next(h.names)
    path = (route.replace("{study_id}", h.study_id).replace("{entry_id}", h.model_id)
            .replace("{name}", "breast" if "datasets" in route else f"victim{n}"))
    kw: dict[str, Any] = {}
    if "{export_id}" in route:  # a decision is once per site: a fresh request for it
        path = path.replace("{export_id}", h.export() if method == "POST" else h.export_id)
        if method == "POST":
            kw["json"] = {"decision": "approve", "reason": "matrix"}
    elif (method, route) == ("POST", "/v1/studies/{study_id}/exports"):
        kw["json"] = EXPORT
    if (method, route) == ("POST", "/v1/studies"):
        kw["json"] = study_config(name=f"matrix{n}", rounds=1)
    elif (method, route) == ("POST", "/v1/users"):
        kw["json"] = {"name": f"new{n}", "role": "auditor", "site": None}
    elif (method, route) == ("DELETE", "/v1/users/{name}"):
        h.add(f"victim{n}", Role.AUDITOR)
    return path, kw


@pytest.mark.parametrize(("method", "route"), sorted(EXPECTED))
def test_the_role_matrix(hub: Hub, method: str, route: str) -> None:
    admitted = EXPECTED[(method, route)]
    path, kw = _request(hub, method, route)
    for why, token in (("no token", None), ("garbage", "not-a-token"),
                       ("well-formed but unknown", "fc_" + "1" * 16 + "_" + "x" * 43),
                       ("revoked", hub.tokens["gone"])):
        r = (hub.http.request(method, path, **kw) if token is None
             else hub.raw(token, method, path, **kw))
        assert r.status_code == 401, (why, r.status_code, r.text)
        assert r.headers.get("www-authenticate") == "Bearer"
    for role in set(Role) - set(admitted):
        r = hub.as_(ACTING[role], method, path, **kw)
        assert r.status_code == 403, (role, r.status_code, r.text)
        assert role.value in r.json()["detail"]
    for role, status in admitted.items():
        path, kw = _request(hub, method, route)  # a fresh victim / name per call
        r = hub.as_(ACTING[role], method, path, **kw)
        assert r.status_code == status, (role, r.status_code, r.text)


def test_researcher_b_cannot_tell_researcher_a_s_study_exists(hub: Hub) -> None:
    sid, mid = hub.study_id, hub.model_id
    for path in (f"/v1/studies/{sid}", f"/v1/studies/{sid}/events",
                 f"/v1/models/{mid}",
                 f"/v1/models/{mid}/card"):
        theirs = hub.as_("rita", "GET", path)
        unknown = hub.as_("rita", "GET", path.replace(sid, "nosuchstudy").replace(mid, "nosuch"))
        assert theirs.status_code == unknown.status_code == 404, (path, theirs.text)
        assert theirs.json()["detail"].replace(sid, "X").replace(mid, "X") == \
            unknown.json()["detail"].replace("nosuchstudy", "X").replace("nosuch", "X")
    assert hub.as_("rita", "POST", f"/v1/studies/{sid}/resume").status_code == 404
    theirs, unknown = (hub.as_("rita", "POST", f"/v1/studies/{s}/exports", json=EXPORT)
                       for s in (sid, "nosuchstudy"))
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json()["detail"].replace(sid, "X") == \
        unknown.json()["detail"].replace("nosuchstudy", "X")
    assert hub.as_("rita", "GET", f"/v1/exports/{hub.export_id}").status_code == 404
    assert sid not in {s["study_id"] for s in hub.as_("rita", "GET", "/v1/studies").json()}
    assert mid not in {m["id"] for m in hub.as_("rita", "GET", "/v1/models").json()}
    # ...while A, the admin and the auditor see it
    for user in ("researcher", "admin", "audrey"):
        listed = {s["study_id"] for s in hub.as_(user, "GET", "/v1/studies").json()}
        assert sid in listed, user


def test_a_steward_sees_only_the_studies_of_their_site(hub: Hub) -> None:
    sid, mid = hub.study_id, hub.model_id
    assert hub.as_("sam", "GET", f"/v1/studies/{sid}").json()["owner"] == "researcher"
    assert sid in {s["study_id"] for s in hub.as_("sam", "GET", "/v1/studies").json()}
    assert mid in {m["id"] for m in hub.as_("sam", "GET", "/v1/models").json()}
    for path in (f"/v1/studies/{sid}", f"/v1/studies/{sid}/events", f"/v1/models/{mid}"):
        assert hub.as_("zed", "GET", path).status_code == 404, path
    assert hub.as_("zed", "GET", "/v1/studies").json() == []
    assert hub.as_("zed", "GET", "/v1/models").json() == []


def test_users_are_listed_without_secrets(hub: Hub) -> None:
    listed = hub.as_("admin", "GET", "/v1/users").json()
    by_name = {u["name"]: u for u in listed}
    assert by_name["sam"]["role"] == "steward" and by_name["sam"]["site"] == "alpha"
    assert by_name["gone"]["revoked"] is not None and by_name["rita"]["revoked"] is None
    text = json.dumps(listed)
    assert "argon2" not in text and not any(t in text for t in hub.tokens.values())
    assert all(set(u) == {"name", "role", "site", "created", "revoked"} for u in listed)


def test_a_revoked_token_fails_on_the_very_next_request(hub: Hub) -> None:
    hub.add("brief", Role.AUDITOR)
    assert hub.as_("brief", "GET", "/v1/studies").status_code == 200  # now cached
    assert hub.as_("admin", "DELETE", "/v1/users/brief").status_code == 200
    assert hub.as_("brief", "GET", "/v1/studies").status_code == 401
    # a revoked name is not given to someone else, and an unknown name is a 404
    again = hub.as_("admin", "POST", "/v1/users",
                    json={"name": "brief", "role": "admin", "site": None})
    assert again.status_code == 409, again.text
    assert hub.as_("admin", "DELETE", "/v1/users/nobody").status_code == 404
    bad = hub.as_("admin", "POST", "/v1/users", json={"name": "s2", "role": "steward"})
    assert bad.status_code == 422 and "--site" in bad.json()["detail"]


def _fedcare(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FEDCARE_")}
    return subprocess.run([sys.executable, "-m", "fedcare.cli.main", *args], text=True,
                          capture_output=True, env={**base, "NO_COLOR": "1", "COLUMNS": "200",
                                                    **(env or {})}, timeout=120)


def test_the_users_commands_talk_to_the_hub_with_the_admin_s_token(hub: Hub,
                                                                   tmp_path: Path) -> None:
    admin_dir = str(hub.fed.fed_dir / "admin")
    out = tmp_path / "carol.token"
    added = _fedcare("users", "add", "carol", "--role", "steward", "--site", "beta",
                     "--out", str(out), "--federation", admin_dir)
    assert added.returncode == 0, added.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    carol = out.read_text().strip()
    assert carol not in added.stdout
    assert hub.raw(carol, "GET", f"/v1/studies/{hub.study_id}").status_code == 200
    listed = _fedcare("users", "list", "--federation", admin_dir)
    assert listed.returncode == 0 and "carol" in listed.stdout and "beta" in listed.stdout
    printed = _fedcare("users", "add", "dave", "--role", "auditor", "--federation", admin_dir)
    assert printed.returncode == 0 and "shown this once" in printed.stdout
    dave = printed.stdout.strip().splitlines()[-1]
    assert hub.raw(dave, "GET", "/v1/studies").status_code == 200
    revoked = _fedcare("users", "revoke", "carol", "--federation", admin_dir)
    assert revoked.returncode == 0, revoked.stderr
    assert hub.raw(carol, "GET", "/v1/studies").status_code == 401
    # a researcher's token cannot manage users: the hub's 403, a non-zero exit
    as_researcher = _fedcare("users", "list", "--federation",
                             str(hub.fed.researcher_dir))
    assert as_researcher.returncode != 0 and "403" in as_researcher.stderr
    # the audit trail has each add and revoke, never a token
    log = _audit_log(hub.fed)
    kinds = [(e["kind"], e["subject"]) for e in log]
    for entry in (("user_added", "user:carol"), ("user_added", "user:dave"),
                  ("user_revoked", "user:carol"), ("user_added", "user:admin"),
                  ("user_revoked", "user:gone")):
        assert entry in kinds, entry
    text = json.dumps(log)
    assert not any(t in text for t in (*hub.tokens.values(), carol, dave))
    assert "argon2" not in text


def test_an_auditor_fetches_and_verifies_the_hub_s_audit_trail_over_https(
        hub: Hub, tmp_path: Path) -> None:
    token = tmp_path / "audrey.token"
    token.write_text(hub.tokens["audrey"])
    out = tmp_path / "hub-audit"
    fed = hub.fed
    args = ("audit", "fetch", "--out", str(out), "--hub", fed.url,
            "--ca", str(fed.hub_dir / "ca.crt"), "--token-file", str(token))
    fetched = _fedcare(*args)
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    assert "OK" in fetched.stdout and "key SHA-256" in fetched.stdout
    # what was fetched is the hub's own key, and the log's entries are the hub's (a prefix
    # of the file on its disk: the hub may have written more since)
    from fedcare.hub.audit import LOG_FILE, PUBLIC_FILE, hub_log_and_keys

    path, _ = hub_log_and_keys(fed.hub_dir)
    assert (out / PUBLIC_FILE).read_bytes() == (path.parent / PUBLIC_FILE).read_bytes()
    saved = (out / LOG_FILE).read_bytes()
    assert path.read_bytes().startswith(saved) and saved.count(b"\n") > 5
    # an entry edited after the fetch is named by verify
    lines = saved.decode().splitlines(keepends=True)
    entry = json.loads(lines[2])
    entry["subject"] += "x"
    lines[2] = json.dumps(entry) + "\n"
    (out / LOG_FILE).write_text("".join(lines))
    bad = _fedcare("audit", "verify", "--log", str(out / LOG_FILE), "--key",
                   str(out / PUBLIC_FILE))
    assert bad.returncode == 1 and "FAILED" in bad.stdout, bad.stdout + bad.stderr
    # a researcher or a steward may not read the trail; no token, 401
    for user in ("researcher", "sam"):
        token.write_text(hub.tokens[user])
        refused = _fedcare(*args)
        assert refused.returncode == 2 and "403" in refused.stderr, refused.stderr


def _audit_log(fed: NetFederation) -> list[dict[str, Any]]:
    from fedcare.hub.audit import hub_log_and_keys

    deadline = time.monotonic() + 10
    while True:
        path, _ = hub_log_and_keys(fed.hub_dir)
        entries = [json.loads(line) for line in path.read_text().splitlines()]
        if any(e["subject"] == "user:carol" and e["kind"] == "user_revoked"
               for e in entries) or time.monotonic() > deadline:
            return entries
        time.sleep(0.2)


def test_revocations_and_users_survive_a_hub_restart(hub: Hub) -> None:
    """Last in this file: restarts the hub (the bootstrap import runs again and must neither
    duplicate nor revive anyone)."""
    hub.fed.kill_hub()
    hub.fed.start_hub(api_docs=True)
    assert hub.as_("gone", "GET", "/v1/sites").status_code == 401
    assert hub.as_("brief", "GET", "/v1/sites").status_code == 401
    for user in ("admin", "researcher", "rita", "sam", "audrey"):
        assert hub.as_(user, "GET", "/v1/sites").status_code == 200, user
    names = [u["name"] for u in hub.as_("admin", "GET", "/v1/users").json()]
    assert len(names) == len(set(names)) and {"admin", "researcher"} <= set(names)
    assert hub.as_("rita", "GET", f"/v1/studies/{hub.study_id}").status_code == 404
