"""Worker-process transport for simulation: sites run in parallel on the machine's cores.

Workers are forked *after* every site's data and learner exist, so they share those pages
with the parent (copy-on-write) instead of reloading them: memory stays near the one-process
figure. Each site is pinned to one worker (site i -> worker i mod W) so site-local state
stays where it was written. Only bytes (the wire format) cross the pipes; replies are
decoded in the parent with the exchange's expectation.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing as mp
import os
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from multiprocessing.connection import Connection
from typing import Any

from fedcare.core.errors import TransportError, ValidationError
from fedcare.core.wire import ReplyExpectation
from fedcare.transport.base import Outgoing, Received

Handler = Callable[[bytes], bytes]
_STOP = b""


def _worker_main(conn: Connection, handlers: Mapping[str, Handler],
                 init: Callable[[], None] | None) -> None:
    if init is not None:
        init()
    while True:
        try:
            site = conn.recv_bytes().decode()
        except EOFError:
            return
        if not site:
            return
        payload = conn.recv_bytes()
        try:
            reply = handlers[site](payload)
        except Exception as exc:  # noqa: BLE001 (last resort; handlers already reply with errors)
            reply = f"ERR{exc}".encode()
        conn.send_bytes(reply)


class _QueueWorker:
    """A thread that runs one site task at a time from its queue and resolves its future
    with the reply decoded (by the job's expectation)."""

    def __init__(self) -> None:
        self.jobs: queue.Queue[tuple[str, bytes, ReplyExpectation, Future[Received]] | None] = (
            queue.Queue())
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _call(self, site: str, payload: bytes) -> bytes:
        raise NotImplementedError

    def _pump(self) -> None:
        while (job := self.jobs.get()) is not None:
            site, payload, expect, fut = job
            try:
                reply = self._call(site, payload)
                fut.set_result(Received(expect.decode(reply, site=site), len(reply)))
            except (TransportError, ValidationError) as exc:
                fut.set_exception(exc)
            except Exception as exc:  # noqa: BLE001 (handlers reply with errors; last resort)
                fut.set_exception(TransportError(str(exc), site=site))

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=5)


class _Worker(_QueueWorker):
    """A forked process owning a share of the sites; bytes go through a pipe."""

    def __init__(self, ctx: Any, handlers: Mapping[str, Handler],
                 init: Callable[[], None] | None) -> None:
        parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, handlers, init), daemon=True)
        self.proc.start()
        child.close()
        self.conn = parent
        super().__init__()

    def _call(self, site: str, payload: bytes) -> bytes:
        try:
            self.conn.send_bytes(site.encode())
            self.conn.send_bytes(payload)
            reply = self.conn.recv_bytes()
        except (EOFError, OSError) as exc:
            raise TransportError(f"worker process died: {exc}", site=site) from exc
        if reply.startswith(b"ERR"):
            raise TransportError(reply[3:].decode(errors="replace"), site=site)
        return reply

    def stop(self) -> None:
        super().stop()
        with contextlib.suppress(OSError):
            self.conn.send_bytes(_STOP)
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
        self.conn.close()


class _LocalWorker(_QueueWorker):
    """The parent process's own share of the sites, run in a thread.

    Torch releases the GIL inside its kernels, so this thread trains in parallel with the
    forked workers, and the parent (which holds torch already) costs no extra memory.
    """

    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        self.handlers = handlers
        super().__init__()

    def _call(self, site: str, payload: bytes) -> bytes:
        return self.handlers[site](payload)


class ProcessTransport:
    """Runs site handlers on ``workers`` cores: the parent process plus ``workers - 1``
    forked processes (a forked worker costs ~150-200 MB of private memory, the parent none).
    """

    def __init__(self, handlers: Mapping[str, Handler], workers: int,
                 init: Callable[[], None] | None = None) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        if os.name != "posix":
            raise TransportError("parallel simulation needs fork (Linux/macOS)")
        ctx = mp.get_context("fork")
        # Move every live object out of the garbage collector's reach before forking: a
        # collection in a child would otherwise write to (and so copy) every page of the
        # parent's heap it walks. Measured on workload B: see benchmarks/README.md.
        gc.freeze()
        self._sites: Sequence[str] = list(handlers)
        self._route = {s: i % workers for i, s in enumerate(self._sites)}
        self._workers: list[_QueueWorker] = [_LocalWorker(handlers)]
        self._workers += [_Worker(ctx, handlers, init) for _ in range(workers - 1)]

    def send(self, out: Outgoing) -> dict[str, Future[Received]]:
        futures: dict[str, Future[Received]] = {}
        for site, task in out.tasks.items():
            fut: Future[Received] = Future()
            w = self._route.get(site)
            if w is None:
                fut.set_exception(TransportError(f"no route to site {site!r}"))
            else:
                self._workers[w].jobs.put((site, bytes(task), out.expect, fut))
            futures[site] = fut
        return futures

    def close(self) -> None:
        for w in self._workers:
            w.stop()
        self._workers.clear()
