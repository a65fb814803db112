"""A real mTLS handshake between two processes, with certificates from `fedcare provision`."""

from __future__ import annotations

import select
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedcare.hub.provisioning import (
    Federation,
    client_ssl_context,
    create_federation,
    revoke_site,
)

SERVER = Path(__file__).with_name("tls_site_server.py")


def _kit(fed: Federation, site: str) -> Path:
    """The site's own kit (its key never sits in the federation folder)."""
    return fed.root.parent / "kits" / site
TIMEOUT = 10.0


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    root = tmp_path_factory.mktemp("tls")
    return create_federation(root / "fed", hub_host="hub.example.org",
                             sites=["charite", "st-marys"], site_kits=root / "kits")


@pytest.fixture(scope="module")
def other_fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    root = tmp_path_factory.mktemp("tls-other")
    return create_federation(root / "fed", hub_host="hub.example.org", sites=["charite"],
                             site_kits=root / "kits")


@pytest.fixture(scope="module")
def port(fed: Federation) -> Iterator[int]:
    """Start the server process on the hub folder; always kill it afterwards."""
    proc = subprocess.Popen([sys.executable, str(SERVER), str(fed.hub.dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
        line = proc.stdout.readline() if ready and proc.stdout else ""
        if not line.strip().isdigit():
            proc.kill()
            _, err = proc.communicate(timeout=TIMEOUT)
            pytest.fail(f"server did not start: {line!r} {err}")
        yield int(line)
    finally:
        proc.kill()
        proc.communicate(timeout=TIMEOUT)


def _exchange(context: ssl.SSLContext, port: int, hostname: str = "localhost") -> str:
    """Connect, handshake, and return the server's one-line verdict ('' if it hung up)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw, \
            context.wrap_socket(raw, server_hostname=hostname) as tls:
        data = b""
        while not data.endswith(b"\n"):
            chunk = tls.recv(1024)
            if not chunk:
                break
            data += chunk
    return data.decode().strip()


@pytest.mark.parametrize("hostname", ["hub.example.org", "localhost", "127.0.0.1"])
def test_site_completes_mtls_and_the_server_learns_its_name(fed: Federation, port: int,
                                                            hostname: str) -> None:
    context = client_ssl_context(_kit(fed, "charite"))
    assert _exchange(context, port, hostname) == "OK charite"


def test_the_client_refuses_a_hub_name_not_in_the_certificate(fed: Federation,
                                                              port: int) -> None:
    context = client_ssl_context(_kit(fed, "charite"))
    with pytest.raises(ssl.SSLCertVerificationError, match=r"mismatch|doesn't match"):
        _exchange(context, port, "evil.example.org")


def test_a_kit_from_another_federation_fails_the_handshake(other_fed: Federation,
                                                           port: int) -> None:
    context = client_ssl_context(_kit(other_fed, "charite"))
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        _exchange(context, port)


def _client_trusting(fed: Federation, kit: Path | None) -> ssl.SSLContext:
    """Trusts the right CA (so the hub checks out), presents ``kit``'s certificate if any."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(fed.hub.dir / "ca.crt")
    if kit is not None:
        context.load_cert_chain(kit / "site.crt", kit / "site.key")
    return context


def test_the_hub_refuses_a_foreign_client_certificate(fed: Federation, other_fed: Federation,
                                                      port: int) -> None:
    context = _client_trusting(fed, _kit(other_fed, "charite"))
    # TLS 1.3: the client finishes first, then reads the hub's alert.
    with pytest.raises((ssl.SSLError, ConnectionResetError), match=r"unknown ca|reset"):
        _exchange(context, port)


def test_the_hub_refuses_a_client_without_a_certificate(fed: Federation, port: int) -> None:
    with pytest.raises((ssl.SSLError, ConnectionResetError), match=r"certificate required|reset"):
        _exchange(_client_trusting(fed, None), port)


def test_a_revoked_site_completes_tls_but_is_refused(fed: Federation, port: int) -> None:
    context = client_ssl_context(_kit(fed, "st-marys"))
    assert _exchange(context, port) == "OK st-marys"

    revoke_site(fed.root, "st-marys", reason="key-compromise")  # the server is still running

    verdict = _exchange(context, port)
    assert verdict.startswith("REFUSED RevokedCertificate:"), verdict
    assert "st-marys" in verdict
    assert _exchange(client_ssl_context(_kit(fed, "charite")), port) == "OK charite"
