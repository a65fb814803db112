"""The one-method transport interface.

``submit(site, payload)`` hands an encoded task to a site and returns a future of the site's
encoded reply. The round engine only sees bytes and futures, so the in-memory carrier used by
simulation, the worker-process carrier and the HTTPS carrier are interchangeable.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Protocol


class Transport(Protocol):
    def submit(self, site: str, payload: bytes) -> Future[bytes]:
        """Deliver ``payload`` to ``site``; the future resolves to its reply bytes."""
        ...

    def close(self) -> None:
        """Release workers or connections."""
        ...
