"""The one-method transport interface.

``send(payloads)`` hands one exchange's encoded tasks (one per site) to the sites and returns
a future of each site's encoded reply. The round engine only sees bytes and futures, so the
in-memory carrier used by simulation, the worker-process carrier and the HTTPS carrier are
interchangeable. An exchange goes in one call so that a carrier can do its per-exchange work
once (the hub records all of a round's tasks in one database transaction).
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future
from typing import Protocol

from fedcare.core.wire import Reply, TaskPayload


class Transport(Protocol):
    def send(self, payloads: Mapping[str, bytes | TaskPayload]) -> dict[str, Future[Reply]]:
        """Deliver each site's payload; each future resolves to that site's reply bytes (or,
        from a transport that had to validate them itself, a :class:`ValidatedReply`).

        A :class:`TaskPayload` is a task in two parts whose arrays every site's task shares;
        ``bytes(payload)`` is the message. A transport that keeps it apart can store and send
        a round's model once (the hub does)."""
        ...

    def close(self) -> None:
        """Release workers or connections."""
        ...
