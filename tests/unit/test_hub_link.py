"""The node's link to the hub: which proxy the environment names, and how failures surface
(the request path itself runs over real mutual TLS in tests/integration)."""

from __future__ import annotations

import socket
import threading

import pytest
import urllib3

from fedcare.node.hub_link import HubLink, LinkError, proxy_for

HUB = "https://hub.example.org:8443"


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY",
                 "no_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(("env", "expected"), [
    ({}, None),
    ({"HTTPS_PROXY": "http://proxy:3128"}, "http://proxy:3128"),
    ({"https_proxy": "http://proxy:3128"}, "http://proxy:3128"),
    ({"ALL_PROXY": "http://all:3128"}, "http://all:3128"),
    ({"HTTPS_PROXY": "http://proxy:3128", "ALL_PROXY": "http://all:3128"}, "http://proxy:3128"),
    ({"HTTP_PROXY": "http://plain:3128"}, None),  # the hub is https: HTTP_PROXY is not for it
    ({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "example.org"}, None),
    ({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "*"}, None),
    ({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "other.org"}, "http://proxy:3128"),
    ({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": ""}, "http://proxy:3128"),
])
def test_proxy_for_reads_the_environment_as_curl_does(
        monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str | None) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert proxy_for(HUB) == expected


def test_a_proxy_with_credentials_sends_them_to_the_proxy_only(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://alice:s3cret@proxy:3128")
    link = HubLink(HUB, None, connect_timeout=1, read_timeout=1, user_agent="t")
    pool = link._pool
    assert isinstance(pool, urllib3.ProxyManager)
    assert pool.proxy is not None and pool.proxy.auth is None  # not in the proxy URL ...
    assert pool.proxy_headers["proxy-authorization"].startswith("Basic ")  # ... but here


def test_an_unsupported_proxy_scheme_is_refused_with_its_name(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "socks5://proxy:1080")
    with pytest.raises(ValueError, match="socks5://proxy:1080"):
        HubLink(HUB, None, connect_timeout=1, read_timeout=1, user_agent="t")


def test_a_hub_that_is_not_listening_is_a_connect_failure() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    link = HubLink(f"https://127.0.0.1:{port}", None, connect_timeout=2, read_timeout=2,
                   user_agent="t")
    with pytest.raises(LinkError) as caught:
        link.request("GET", "/v1/health")
    assert caught.value.connect


def test_a_hub_that_hangs_up_mid_exchange_is_not_a_connect_failure() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        link = HubLink(f"https://127.0.0.1:{port}", None, connect_timeout=2, read_timeout=2,
                       user_agent="t")

        def hang_up() -> None:
            conn, _ = server.accept()
            conn.close()  # mid TLS handshake

        t = threading.Thread(target=hang_up)
        t.start()
        with pytest.raises(LinkError) as caught:
            link.request("GET", "/v1/health")
        t.join()
    assert not caught.value.connect
