"""The one-method transport interface.

``send(out)`` hands one exchange's tasks (one per site, already encoded) to the sites and
returns a future of each site's reply, decoded and validated with the exchange's
:class:`~fedcare.core.wire.ReplyExpectation`. The round engine only sees typed work going
out and typed replies coming back, so the in-memory carrier used by simulation, the
worker-process carrier and the HTTPS carrier are interchangeable; every one of them still
carries the wire format (simulation exercises it on every task). An exchange goes in one
call so that a carrier can do its per-exchange work once (the hub records all of a round's
tasks in one database transaction).
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

from fedcare.core.messages import ErrorReply, TaskKind, Update
from fedcare.core.wire import ReplyExpectation, TaskPayload


@dataclass(frozen=True)
class Outgoing:
    """One exchange: each site's task of round ``round`` and what their replies must be."""

    round: int
    kind: TaskKind
    #: The encoded task for each site; the parts every site's task shares are one object.
    tasks: Mapping[str, TaskPayload]
    expect: ReplyExpectation
    #: A secure round's protocol attempt (part of its task ids, see ``messages.task_id``).
    attempt: int = 1


@dataclass(frozen=True)
class Received:
    """A site's reply as the transport decoded and validated it, and its size on the wire
    (bytes; the round's ``bytes_up``)."""

    reply: Update | ErrorReply
    size: int


class Transport(Protocol):
    def send(self, out: Outgoing) -> dict[str, Future[Received]]:
        """Deliver each site's task; each future resolves to that site's reply, decoded with
        ``out.expect``, or raises: :class:`~fedcare.core.errors.ValidationError` for a reply
        that fails it, :class:`~fedcare.core.errors.TransportError` when the site could not
        be reached."""
        ...

    def close(self) -> None:
        """Release workers or connections."""
        ...
