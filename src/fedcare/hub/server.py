"""Run the hub's ASGI app on uvicorn over TLS, exposing the client certificate to the app.

uvicorn (0.54) does not yet implement the ASGI TLS extension, so this module's protocol class
puts the verified peer certificate (DER) into ``scope["extensions"]["tls"]["client_cert"]``
for every request on the connection. The TLS layer accepts connections without a certificate
(people use their own bearer tokens, :mod:`fedcare.hub.auth`) but verifies any certificate
presented against the federation CA; node endpoints then refuse requests without one.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from fedcare.core.errors import ConfigError
from fedcare.hub.api import DEFAULT_MAX_REQUEST, PeerTrust, create_app
from fedcare.hub.service import DEFAULT_MAX_BODY, HubService

log = logging.getLogger("fedcare.hub")


def _hand_over_client_cert(protocol: Any, transport: asyncio.Transport) -> None:
    ssl_object = transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    inner = protocol.app

    async def app_with_cert(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope.setdefault("extensions", {})["tls"] = {"client_cert": der}
        await inner(scope, receive, send)

    protocol.app = app_with_cert


class ClientCertH11Protocol(H11Protocol):
    """h11 protocol that hands the connection's client certificate to the app."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        _hand_over_client_cert(self, transport)


def http_protocol() -> type[asyncio.Protocol]:
    """The HTTP parser the hub runs: httptools (C, from uvicorn's standard extras) when it is
    installed, else h11 (pure Python). Both carry the client certificate. httptools parses a
    4 MB model upload at a fraction of h11's CPU, and the hub's one event loop parses every
    site's upload of every round."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return ClientCertH11Protocol

    class ClientCertHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            _hand_over_client_cert(self, transport)

    return ClientCertHttpToolsProtocol


#: The one shared researcher token of hubs before users (plaintext in the hub folder).
LEGACY_TOKEN_FILE = "researcher.token"


def refuse_shared_token(hub_dir: Path) -> None:
    """A hub folder that still holds the shared researcher token in plain text is refused:
    the hub admits only users with their own tokens now, and a plaintext token beside the
    hub's key is what users replaced. Deleting it loses nothing the hub needs once its
    users are bootstrapped (``fedcare provision users``)."""
    legacy = Path(hub_dir) / LEGACY_TOKEN_FILE
    if legacy.exists():
        raise ConfigError(
            f"{legacy} is the shared researcher token of an older fedcare; the hub now admits "
            "only users with their own tokens. Run `fedcare provision users FEDERATION_DIR` on "
            "the coordinator's machine (it makes an admin and a researcher user, writes their "
            "tokens to FEDERATION_DIR/admin and FEDERATION_DIR/researcher and only their "
            "hashes to the hub folder), copy hub/users.bootstrap.json to the hub, then delete "
            f"{legacy}")


def build_server(hub_dir: Path, data_dir: Path, *, host: str | None = None,
                 port: int | None = None, db_url: str | None = None,
                 max_body: int = DEFAULT_MAX_BODY, max_request: int = DEFAULT_MAX_REQUEST,
                 keep_replies: bool = False, api_docs: bool = False
                 ) -> tuple[uvicorn.Server, HubService]:
    """The hub's server and service, wired: the service checks revocation against the
    federation's CRL from construction on."""
    from fedcare.pki.trust import load_hub_config, server_ssl_context

    cfg = load_hub_config(hub_dir)
    refuse_shared_token(hub_dir)
    trust = PeerTrust(hub_dir)
    service = HubService(data_dir, revocation=trust, db_url=db_url, keep_replies=keep_replies,
                         max_body=max_body)
    added = service.users.import_bootstrap(hub_dir)
    if added:
        log.info("imported the hub's first users from %s: %s", hub_dir, ", ".join(added))
    app = create_app(service, trust, max_request=max_request, api_docs=api_docs)
    context = server_ssl_context(hub_dir)
    context.verify_mode = ssl.CERT_OPTIONAL  # see the module docstring
    config = uvicorn.Config(app, host=host or cfg.host, port=port if port is not None else
                            cfg.port, http=http_protocol(), log_level="warning",
                            timeout_keep_alive=75, lifespan="off")
    config.load()
    config.ssl = context
    server = _HubServer(config, service, public_url=cfg.url)
    return server, service


class _HubServer(uvicorn.Server):
    """Stops the service's long-polls as soon as a shutdown signal arrives: uvicorn waits
    for open requests before it exits, and a node's long-poll would otherwise hold SIGTERM
    for up to its ``wait`` (20-60 s)."""

    def __init__(self, config: uvicorn.Config, service: HubService,
                 public_url: str | None = None) -> None:
        super().__init__(config)
        self.service = service
        self.public_url = public_url

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets)
        bound = [sock.getsockname() for server in getattr(self, "servers", [])
                 for sock in server.sockets or []]
        if not bound:  # startup failed (uvicorn logged why)
            return
        where = ", ".join(f"https://{a[0] if ':' not in a[0] else f'[{a[0]}]'}:{a[1]}"
                          for a in bound)
        log.info("hub listening on %s (mutual TLS); nodes and researchers reach it as %s",
                 where, self.public_url or where)

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.service.stop()
        super().handle_exit(sig, frame)


def serve(hub_dir: Path, data_dir: Path, **kwargs: Any) -> None:
    server, service = build_server(hub_dir, data_dir, **kwargs)
    service.start()
    try:
        server.run()
    finally:
        service.stop()
