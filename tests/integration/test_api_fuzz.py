"""Property-based fuzzing of the hub's HTTP API (schemathesis, in process): no input, however
malformed, may produce a 5xx.

The app is the real one (:func:`fedcare.hub.api.create_app` over a :class:`HubService` on
SQLite in a temporary folder, with a freshly provisioned federation's CA). There is no TLS in
process, so an ASGI wrapper puts a real site certificate (DER) where the hub's uvicorn
protocol puts the peer certificate, and every request carries the researcher token: both node
and researcher endpoints are exercised past their authentication.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from fedcare.hub.api import PeerTrust, create_app
from fedcare.hub.auth import Role
from fedcare.hub.provisioning import create_federation
from fedcare.hub.service import HubService
from tests.tokens import TOKEN, install_token


class _WithClientCert:
    """ASGI wrapper: every request arrives as if over mTLS with ``der`` as client cert."""

    def __init__(self, app: Any, der: bytes) -> None:
        self.app, self.der = app, der

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, "extensions": {**scope.get("extensions", {}),
                                             "tls": {"client_cert": self.der}}}
        await self.app(scope, receive, send)


def _site_der(kit: Path) -> bytes:
    cert = x509.load_pem_x509_certificate((kit / "site.crt").read_bytes())
    return cert.public_bytes(Encoding.DER)


@contextlib.contextmanager
def _hub(root: Path, db_url: str | None = None) -> Iterator[tuple[Any, HubService]]:
    """The hub's ASGI app (wrapped to present site alpha's certificate) and its service."""
    fed = create_federation(root / "fed", hub_host="127.0.0.1", sites=["alpha", "beta"],
                            site_kits=root / "kits")
    trust = PeerTrust(fed.hub.dir)
    service = HubService(root / "data", revocation=trust, db_url=db_url)
    install_token(service, TOKEN, "fuzzer", Role.ADMIN)  # admins may call the most
    app = create_app(service, trust, api_docs=True)
    # Some state for the fuzzer to run into: both sites known, holding a dataset.
    for site in ("alpha", "beta"):
        service.hello(site, "1", "0.1.0", [{"name": "breast", "rows": 10}], "s" * 8)
    try:
        yield _WithClientCert(app, _site_der(fed.site("alpha").kit_dir)), service
    finally:
        service.stop()  # wakes long-polls; study threads are daemons
        service.db.dispose()


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, HubService]]:
    with _hub(tmp_path_factory.mktemp("fuzz")) as made:
        yield made


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def any_hub(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[Any, HubService]]:
    """The same on SQLite and on PostgreSQL (which, unlike SQLite, enforces column lengths)."""
    db_url = None
    if request.param == "postgresql":
        pg = request.getfixturevalue("pg_server")
        db_url = pg.create_database()
    try:
        with _hub(tmp_path_factory.mktemp("hostile"), db_url) as made:
            yield made
    finally:
        if db_url is not None:
            pg.drop_database(db_url)


@pytest.fixture(scope="module")
def hub_schema(hub: tuple[Any, HubService]) -> Any:
    # The description is served only with api_docs and behind the token (off by default).
    return schemathesis.openapi.from_asgi("/openapi.json", hub[0],
                                          headers={"Authorization": f"Bearer {TOKEN}"})


schema = schemathesis.pytest.from_fixture("hub_schema")


def _no_wait(wait: Any) -> Any:
    """0 for any ``wait`` the API accepts (a number 0..60, maybe as a string), else as is."""
    if wait is None:
        return 0
    try:
        ok = not isinstance(wait, bool) and 0 <= float(wait) <= 60
    except (TypeError, ValueError):
        ok = False
    return 0 if ok else wait


@schema.parametrize()
@settings(max_examples=30, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_no_input_makes_the_hub_answer_5xx(case: Any) -> None:
    if case.path == "/v1/node/task":
        # The long-poll would hold each example for up to 60 s (20 s when `wait` is absent):
        # keep hostile values as they are, turn every valid one into "don't wait".
        case.query = {**(case.query or {}), "wait": _no_wait((case.query or {}).get("wait"))}
    case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"},
                           checks=[not_a_server_error])


# The reply body is raw bytes (not in the OpenAPI schema), so the generated cases above never
# exercise it: a few hostile bodies and headers by hand, over the same in-process app.
OCTET = "application/octet-stream"


@pytest.mark.parametrize(("task_id", "body", "sha", "ctype", "expected"), [
    pytest.param("x/r1/fit/alpha", b"garbage", "good", OCTET, 422, id="garbage"),
    pytest.param("x/r1/fit/alpha", b"garbage", "00" * 32, OCTET, 422, id="wrong-sha"),
    pytest.param("x/r1/fit/alpha", b"garbage", None, OCTET, 422, id="no-sha"),
    pytest.param("x/r1/fit/alpha", b"garbage", "good", "text/plain", 415, id="text-plain"),
    pytest.param("x/r1/fit/alpha", b"", "good", OCTET, 422, id="empty"),
    pytest.param("s" * 300 + "/r1/fit/alpha", b"garbage", "good", OCTET, 422,
                 id="long-study-prefix"),
    pytest.param("FEDC1", b"FEDC1\xff\xff\xff\xff", "good", OCTET, 422, id="huge-header-len"),
    pytest.param("FEDC1", b"FEDC1\x02\x00\x00\x00{}", "good", OCTET, 422, id="empty-header"),
    pytest.param("FEDC1", b"FEDC1\x02\x00\x00\x00[]", "good", OCTET, 422, id="list-header"),
    pytest.param("nope/r1/fit/alpha", b"FEDC1\x1f\x00\x00\x00" +
                 b'{"task_id":"nope/r1/fit/alpha"}', "good", OCTET, 404, id="unknown-task"),
])
def test_hostile_reply_bodies_are_4xx(any_hub: tuple[Any, HubService], task_id: str,
                                      body: bytes, sha: str | None, ctype: str,
                                      expected: int) -> None:
    headers = {"Content-Type": ctype}
    if sha is not None:
        headers["X-Content-SHA256"] = hashlib.sha256(body).hexdigest() if sha == "good" else sha

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=any_hub[0], raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
            return await client.post("/v1/node/reply", params={"task_id": task_id},
                                     content=body, headers=headers)

    r = asyncio.run(post())
    assert r.status_code == expected, r.text
