"""In-process transport: the site runs the task synchronously inside ``send``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Future

from fedcare.core.errors import TransportError, ValidationError
from fedcare.core.wire import ReplyExpectation, TaskPayload
from fedcare.transport.base import Outgoing, Received

Handler = Callable[[bytes], bytes]


class InMemoryTransport:
    """Delivers the wire bytes to site handlers in the same process (no thread) and decodes
    their replies as any carrier does, so simulation exercises the wire format."""

    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        self._handlers = dict(handlers)

    def send(self, out: Outgoing) -> dict[str, Future[Received]]:
        return {site: self._run(site, task, out.expect) for site, task in out.tasks.items()}

    def _run(self, site: str, task: TaskPayload, expect: ReplyExpectation
             ) -> Future[Received]:
        fut: Future[Received] = Future()
        handler = self._handlers.get(site)
        if handler is None:
            fut.set_exception(TransportError(f"no route to site {site!r}"))
            return fut
        try:
            reply = handler(bytes(task))
        except Exception as exc:  # noqa: BLE001 (delivered to the engine through the future)
            fut.set_exception(TransportError(f"site handler failed: {exc}", site=site))
            return fut
        try:
            fut.set_result(Received(expect.decode(reply, site=site), len(reply)))
        except ValidationError as exc:
            fut.set_exception(exc)
        return fut

    def close(self) -> None:
        self._handlers.clear()
