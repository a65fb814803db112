"""The hub API's guards, in process (the real app over a real service and a freshly
provisioned federation's CA and CRL; an ASGI wrapper puts a site certificate where the hub's
TLS layer does): the researcher token is parsed strictly, the API description is off unless
asked for (and then needs the token), a hello is bounded, and a missing revocation list
refuses sites with a 403 that says why."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from fedcare.hub.api import MAX_DATASETS, MAX_QUALITY_BYTES, PeerTrust, create_app
from fedcare.hub.provisioning import create_federation
from fedcare.hub.service import HubService
from tests.tokens import TOKEN, install_token


class _WithClientCert:
    def __init__(self, app: Any, der: bytes) -> None:
        self.app, self.der = app, der

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope = {**scope, "extensions": {"tls": {"client_cert": self.der}}}
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("fed")
    return create_federation(root / "fed", hub_host="127.0.0.1", sites=["alpha"],
                             site_kits=root / "kits")


@pytest.fixture
def hub(federation: Any, tmp_path: Path) -> Iterator[tuple[PeerTrust, HubService, bytes]]:
    trust = PeerTrust(federation.hub.dir)
    service = HubService(tmp_path / "data", revocation=trust)
    cert = x509.load_pem_x509_certificate(
        (federation.site("alpha").kit_dir / "site.crt").read_bytes())
    try:
        yield trust, service, cert.public_bytes(Encoding.DER)
    finally:
        service.stop()
        service.db.dispose()


def _call(app: Any, method: str, path: str, **kw: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
            return await client.request(method, path, **kw)

    return asyncio.run(go())


def _app(hub: tuple[PeerTrust, HubService, bytes], **kw: Any) -> Any:
    trust, service, der = hub
    install_token(service)
    return _WithClientCert(create_app(service, trust, **kw), der)


# -- F18: the Authorization header ------------------------------------------------------------
@pytest.mark.parametrize(("header", "expected"), [
    (f"Bearer {TOKEN}", 200),
    (f"bearer {TOKEN}", 200),  # the scheme is case-insensitive (RFC 7235)
    (f"BEARER {TOKEN}", 200),
    (TOKEN, 401),  # a bare token (was accepted)
    (f"Bearer  {TOKEN}", 401),
    (f"Bearer {TOKEN} ", 401),
    (f"Bearer {TOKEN} x", 401),
    (f"Basic {TOKEN}", 401),
    (f"Bearer{TOKEN}", 401),
    (f"Token {TOKEN}", 401),
    ("Bearer wrong", 401),
    ("Bearer ", 401),
    ("", 401),
])
def test_the_researcher_token_is_parsed_strictly(hub: Any, header: str, expected: int) -> None:
    r = _call(_app(hub), "GET", "/v1/studies", headers={"Authorization": header})
    assert r.status_code == expected, r.text
    if expected == 401:
        assert "Bearer <token>" in r.json()["detail"]


# -- F17: the API description -----------------------------------------------------------------
@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json"])
def test_the_api_description_is_off_by_default(hub: Any, path: str) -> None:
    app = _app(hub)
    assert _call(app, "GET", path).status_code == 404
    assert _call(app, "GET", path,
                 headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json"])
def test_the_api_description_when_asked_for_needs_the_token(hub: Any, path: str) -> None:
    app = _app(hub, api_docs=True)
    assert _call(app, "GET", path).status_code == 401
    r = _call(app, "GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200
    if path == "/openapi.json":
        assert "/v1/node/hello" in r.json()["paths"]


# -- F11: a bounded hello ---------------------------------------------------------------------
def _hello(datasets: list[dict[str, Any]]) -> dict[str, Any]:
    return {"version": "t", "session": "s", "datasets": datasets}


def test_a_hello_with_a_30_mb_quality_report_is_refused_413(hub: Any) -> None:
    """expD.py's first case: refused by its size before it is read, and nothing stored."""
    blob = {"name": "breast", "rows": 190, "quality": {"pad": "A" * (30 << 20)}}
    r = _call(_app(hub), "POST", "/v1/node/hello", json=_hello([blob]))
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    assert hub[1].sites() == []


def test_a_hello_with_1000_datasets_is_refused(hub: Any) -> None:
    """expD.py's second case (1000 datasets x 20 KB): over the body limit; and over the
    dataset count when the body limit is raised."""
    many = [{"name": f"d{i}", "rows": 1, "quality": {"p": "B" * 20000}} for i in range(1000)]
    r = _call(_app(hub), "POST", "/v1/node/hello", json=_hello(many))
    assert r.status_code == 413
    r = _call(_app(hub, max_request=64 << 20), "POST", "/v1/node/hello", json=_hello(many))
    assert r.status_code == 422 and f"at most {MAX_DATASETS}" in r.text
    assert hub[1].sites() == []


def test_a_streamed_body_over_the_limit_is_refused_413(hub: Any) -> None:
    """No Content-Length (chunked): counted as it streams in."""
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"version": "t", "session": "s", "datasets": [{"name": "x", "rows": 1, '
        for _ in range(40):
            yield b'"q": "' + b"C" * 65536 + b'", '
        yield b'"rows": 2}]}'

    r = _call(_app(hub), "POST", "/v1/node/hello", content=chunks(),
              headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["detail"]


def _deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"x": value}
    return value


@pytest.mark.parametrize(("dataset", "why"), [
    ({"name": "b", "rows": 1, "quality": {"p": "Q" * MAX_QUALITY_BYTES}}, "larger than"),
    ({"name": "b", "rows": 1, "quality": _deep(17)}, "nested deeper"),
    ({"name": "b", "rows": 10**13}, "less than or equal"),
    ({"name": "b", "rows": -1}, "greater than or equal"),
    ({"name": "../etc", "rows": 1}, "pattern"),
    ({"name": "a b", "rows": 1}, "pattern"),
    ({"name": "x\n", "rows": 1}, "pattern"),
    ({"name": "n" * 101, "rows": 1}, "at most 100"),
])
def test_a_hello_out_of_bounds_is_refused_422(hub: Any, dataset: dict[str, Any],
                                              why: str) -> None:
    r = _call(_app(hub, max_request=8 << 20), "POST", "/v1/node/hello",
              json=_hello([dataset]))
    assert r.status_code == 422 and why in r.text, r.text
    assert hub[1].sites() == []


def test_a_hello_within_bounds_is_stored(hub: Any) -> None:
    quality = {"rows": 100, "features": {"age": {"missing": 0.1, "hist": [1, 2, 3]}},
               "violations": []}
    r = _call(_app(hub), "POST", "/v1/node/hello", json=_hello([
        {"name": "cardio", "rows": 100, "quality": quality, "contract_hash": "a" * 64},
        {"name": "breast_raw.v2", "rows": 0}]))
    assert r.status_code == 200, r.text
    (site,) = hub[1].sites()
    assert site["name"] == "alpha" and site["datasets"][0]["quality"] == quality


# -- F19: the revocation list disappears while the hub runs -----------------------------------
def test_a_missing_revocation_list_refuses_sites_with_a_reason(
        hub: Any, federation: Any, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    trust: PeerTrust = hub[0]
    app = _app(hub)
    hello = _hello([{"name": "breast", "rows": 1}])
    assert _call(app, "POST", "/v1/node/hello", json=hello).status_code == 200
    crl = trust.crl_path
    backup = crl.with_name("crl.bak")
    shutil.copy(crl, backup)
    try:
        crl.unlink()
        trust._checked = 0.0  # the CRL file is looked at once a second: look now
        with caplog.at_level(logging.ERROR, logger="fedcare.hub"):
            r = _call(app, "POST", "/v1/node/hello", json=hello)
            assert r.status_code == 403, r.text
            assert "cannot read its revocation list" in r.json()["detail"]
            # every later request too (no stale CRL is used), and the outage is logged once
            assert _call(app, "GET", "/v1/node/task",
                         params={"wait": 0}).status_code == 403
        assert sum("revocation list" in m for m in caplog.messages) == 1
        with pytest.raises(Exception, match="revocation list"):
            trust.is_revoked("1")

        crl.write_bytes(b"garbage")
        r = _call(app, "POST", "/v1/node/hello", json=hello)
        assert r.status_code == 403 and "revocation list" in r.json()["detail"]
    finally:
        shutil.copy(backup, crl)
    assert _call(app, "POST", "/v1/node/hello", json=hello).status_code == 200


# -- F4: a long-poll whose node went away ------------------------------------------------------
def test_a_long_poll_whose_client_went_away_gives_its_slot_back(hub: Any) -> None:
    """Else a node that restarted twice within a poll's wait would find its site's slots
    taken by its own dead polls (429) until they timed out."""
    app, service = _app(hub), hub[1]

    async def scenario() -> None:
        gone = asyncio.Event()
        first = True

        async def receive() -> dict[str, Any]:
            nonlocal first
            if first:
                first = False
                return {"type": "http.request", "body": b"", "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            pass

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "GET", "scheme": "https", "path": "/v1/node/task",
                 "raw_path": b"/v1/node/task", "root_path": "", "query_string": b"wait=60",
                 "headers": [(b"host", b"hub")], "client": ("127.0.0.1", 1),
                 "server": ("hub", 443)}
        call = asyncio.create_task(app(scope, receive, send))
        while service.mailbox.open_polls().get("alpha") != 1:
            await asyncio.sleep(0.01)
        gone.set()
        await asyncio.wait_for(call, 30)  # not the poll's 60 s

        async def released() -> None:  # the cancelled poll's own clean-up
            while service.mailbox.open_polls():
                await asyncio.sleep(0.01)

        await asyncio.wait_for(released(), 30)

    asyncio.run(scenario())
