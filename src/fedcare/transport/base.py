"""The one-method transport interface.

``submit(site, payload)`` hands an encoded task to a site and returns a future of the site's
encoded reply. The round engine only sees bytes and futures, so the in-memory carrier used by
simulation, the worker-process carrier and the HTTPS carrier are interchangeable.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Protocol

from fedcare.core.wire import Reply, TaskPayload


class Transport(Protocol):
    def submit(self, site: str, payload: bytes | TaskPayload) -> Future[Reply]:
        """Deliver ``payload`` to ``site``; the future resolves to its reply bytes (or, from a
        transport that had to validate them itself, a :class:`ValidatedReply`).

        A :class:`TaskPayload` is a task in two parts whose arrays every site's task shares;
        ``bytes(payload)`` is the message. A transport that keeps it apart can store and send
        a round's model once (the hub does)."""
        ...

    def close(self) -> None:
        """Release workers or connections."""
        ...
