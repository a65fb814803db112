"""A bandwidth-limited HTTP CONNECT proxy on loopback: the "slow link" between a node and
the hub.

A node honours ``HTTPS_PROXY``; pointed at this proxy, its TLS connection to the hub is
tunnelled through a socket pair that forwards at most ``rate`` bytes per second in each
direction (per connection). The proxy counts what it carried, so a test can check that the
traffic really went through it. It never sees plaintext: the tunnel carries TLS records.

Hand-written (about 80 lines) because no maintained library offers a throttling CONNECT
proxy that runs in-process without extra daemons.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field


@dataclass
class SlowProxy:
    """``with SlowProxy(rate=8e6) as proxy: ... proxy.url ... proxy.bytes_up``."""

    rate: float  # bytes per second, per direction and connection
    chunk: int = 64 * 1024
    port: int = 0
    bytes_up: int = 0      # client -> server (node -> hub)
    bytes_down: int = 0    # server -> client (hub -> node)
    tunnels: int = 0
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _server: asyncio.base_events.Server | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> SlowProxy:
        started = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, sock=sock))
            started.set()
            loop.run_forever()
            # Cancel open tunnels and let them close their sockets before the loop goes.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name="slow-proxy")
        self._thread.start()
        started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        loop = self._loop
        if loop is not None and self._server is not None:
            loop.call_soon_threadsafe(self._server.close)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = request.split(b"\r\n", 1)[0].decode().split(" ", 2)
            if method != "CONNECT":
                writer.write(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                return
            host, port = target.rsplit(":", 1)
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            self.tunnels += 1
            await asyncio.gather(self._pump(reader, up_writer, "bytes_up"),
                                 self._pump(up_reader, writer, "bytes_down"))
        except (OSError, asyncio.IncompleteReadError, ValueError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(OSError):
                writer.close()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    counter: str) -> None:
        """Forward src -> dst, never faster than ``rate`` bytes/s on average."""
        start, sent = time.monotonic(), 0
        try:
            while data := await src.read(self.chunk):
                sent += len(data)
                setattr(self, counter, getattr(self, counter) + len(data))
                ahead = sent / self.rate - (time.monotonic() - start)
                if ahead > 0:
                    await asyncio.sleep(ahead)
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.close()
