"""The node's HTTPS link to its hub: urllib3 with the site's certificate, through the proxy
that ``HTTPS_PROXY`` / ``ALL_PROXY`` name unless ``NO_PROXY`` exempts the hub.

Why urllib3 here and httpx in the researcher's CLI: a node downloads the global model for
every task, and httpx (httpcore + h11) moves a TLS body through several Python layers per
16 KB TLS record, where urllib3 (http.client) reads it in C. Fetching a 4 MB body over
loopback mutual TLS cost the client 10.7 ms of CPU with httpx and 5.3 ms with urllib3; ten
nodes on two cores pay that every round (``benchmarks/network.py``).
"""

from __future__ import annotations

import json as jsonlib
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import urllib3
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError, ProxyError


class LinkError(Exception):
    """The hub could not be reached or the exchange broke off (connection refused or reset,
    timeout, TLS failure, proxy trouble). ``connect``: it failed before a connection was up."""

    def __init__(self, message: str, *, connect: bool) -> None:
        super().__init__(message)
        self.connect = connect


@dataclass(frozen=True)
class HubResponse:
    status_code: int
    #: Case-insensitive, as HTTP header names are.
    headers: Mapping[str, str]
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return jsonlib.loads(self.content)


class HubLink:
    """One keep-alive HTTPS connection to the hub (the node makes one request at a time)."""

    def __init__(self, base_url: str, ssl_context: Any, *, connect_timeout: float,
                 read_timeout: float, user_agent: str) -> None:
        self.base_url = base_url.rstrip("/")
        common: dict[str, Any] = {
            "ssl_context": ssl_context, "retries": False, "maxsize": 1,
            "timeout": urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            "headers": {"User-Agent": user_agent}}
        proxy = proxy_for(self.base_url)
        self._pool: urllib3.PoolManager
        if proxy is None:
            self._pool = urllib3.PoolManager(**common)
        else:
            url = urllib3.util.parse_url(proxy)
            if url.scheme not in ("http", "https"):
                raise ValueError(f"proxy {proxy!r}: only http:// and https:// proxies are "
                                 "supported")
            auth = urllib3.make_headers(proxy_basic_auth=url.auth) if url.auth else None
            self._pool = urllib3.ProxyManager(url._replace(auth=None).url,
                                              proxy_headers=auth, **common)

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                json: Any = None, content: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> HubResponse:
        url = self.base_url + path + (f"?{urlencode(params)}" if params else "")
        send = dict(headers or {})
        if json is not None:
            content = jsonlib.dumps(json).encode()
            send["Content-Type"] = "application/json"
        try:
            r = self._pool.request(method, url, body=content, headers=send or None,
                                   preload_content=True, redirect=False)
        except HTTPError as exc:
            connect = isinstance(exc, NewConnectionError | ConnectTimeoutError | ProxyError)
            raise LinkError(f"{type(exc).__name__}: {exc}", connect=connect) from exc
        return HubResponse(r.status, r.headers, r.data)

    def close(self) -> None:
        self._pool.clear()


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``HTTPS_PROXY``, else ``ALL_PROXY``;
    none when ``NO_PROXY`` covers its host), as curl, requests and httpx read it."""
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get("https") or proxies.get("all")
    host = urllib3.util.parse_url(url).host or ""
    if not proxy or urllib.request.proxy_bypass(host):
        return None
    return proxy
