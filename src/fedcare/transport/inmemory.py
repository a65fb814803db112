"""In-process transport: the site runs the task synchronously inside ``submit``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Future

from fedcare.core.errors import TransportError
from fedcare.core.wire import Reply, TaskPayload, as_bytes

Handler = Callable[[bytes], bytes]


class InMemoryTransport:
    """Delivers bytes to site handlers in the same process (no copy, no thread)."""

    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        self._handlers = dict(handlers)

    def send(self, payloads: Mapping[str, bytes | TaskPayload]) -> dict[str, Future[Reply]]:
        return {site: self._run(site, payload) for site, payload in payloads.items()}

    def _run(self, site: str, payload: bytes | TaskPayload) -> Future[Reply]:
        fut: Future[Reply] = Future()
        handler = self._handlers.get(site)
        if handler is None:
            fut.set_exception(TransportError(f"no route to site {site!r}"))
            return fut
        try:
            fut.set_result(handler(as_bytes(payload)))
        except Exception as exc:  # noqa: BLE001 (delivered to the engine through the future)
            fut.set_exception(TransportError(f"site handler failed: {exc}", site=site))
        return fut

    def close(self) -> None:
        self._handlers.clear()
