"""A tiny mTLS server for test_provision_tls.py, run as its own process.

Usage: ``python tls_site_server.py HUB_DIR``. Listens on 127.0.0.1 (port chosen by the OS,
printed on the first stdout line), then for every connection completes the TLS handshake with
:func:`server_ssl_context`, re-reads the CRL and answers one line: ``OK <site>`` when
:func:`verify_peer` accepts the client certificate, ``REFUSED <error type>: <why>`` when it
does not. Failed handshakes are reported on stderr. Exits after ``IDLE_SECONDS`` without a
connection, so a lost test never leaves it running for long.
"""

from __future__ import annotations

import socket
import ssl
import sys

from fedcare.hub.provisioning import (
    PeerCertificateError,
    load_ca_certificate,
    reload_crl,
    server_ssl_context,
    verify_peer,
)

IDLE_SECONDS = 60.0


def serve(hub_dir: str) -> None:
    context = server_ssl_context(hub_dir)
    ca = load_ca_certificate(hub_dir)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(IDLE_SECONDS)
        print(listener.getsockname()[1], flush=True)
        while True:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                return
            conn.settimeout(10.0)
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    der = tls.getpeercert(binary_form=True)
                    try:
                        reply = f"OK {verify_peer(der, ca, reload_crl(hub_dir))}"
                    except PeerCertificateError as exc:
                        reply = f"REFUSED {type(exc).__name__}: {exc}"
                    tls.sendall(reply.encode() + b"\n")
            except (ssl.SSLError, OSError) as exc:
                print(f"handshake failed: {exc}", file=sys.stderr, flush=True)
            finally:
                conn.close()


if __name__ == "__main__":
    serve(sys.argv[1])
