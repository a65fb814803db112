"""The hub's HTTP protocol: httptools when installed, h11 otherwise; both hand the TLS client
certificate to the app (node endpoints identify a site by it and nothing else)."""

from __future__ import annotations

import asyncio
import builtins
from typing import Any

import pytest
from uvicorn.protocols.http.h11_impl import H11Protocol

from fedcare.hub import server


def test_httptools_is_used_when_installed() -> None:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    assert issubclass(server.http_protocol(), HttpToolsProtocol)


def test_h11_is_the_fallback_without_httptools(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_httptools(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.endswith("httptools_impl"):
            raise ImportError("no httptools here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_httptools)
    chosen = server.http_protocol()
    assert chosen is server.ClientCertH11Protocol and issubclass(chosen, H11Protocol)


class _Transport:
    def __init__(self, der: bytes | None) -> None:
        self.der = der

    def get_extra_info(self, key: str) -> Any:
        if key != "ssl_object":
            return None
        der = self.der

        class _Ssl:
            def getpeercert(self, binary_form: bool = False) -> bytes | None:
                return der

        return _Ssl()


@pytest.mark.parametrize("der", [b"\x30\x03cert", None])
def test_the_client_certificate_reaches_the_app(der: bytes | None) -> None:
    seen: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.update(scope["extensions"]["tls"])

    class _Protocol:
        pass

    protocol = _Protocol()
    protocol.app = app  # type: ignore[attr-defined]
    server._hand_over_client_cert(protocol, _Transport(der))  # type: ignore[arg-type]
    asyncio.run(protocol.app({"type": "http"}, None, None))  # type: ignore[attr-defined]
    assert seen == {"client_cert": der}
