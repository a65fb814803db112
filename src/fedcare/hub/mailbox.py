"""The tasks a hub's running engines offer its sites, and the replies they wait for.

The most delicate concurrency of the hub, in one place, all of it private: engine threads
offer tasks and register what they expect back; long-polls on the event loop wait for their
site's next task and are woken (thread-safely) when one is offered; the reply intake resolves
the engine's future with a validated reply. Nothing here is durable: a restarted hub's
engines offer their tasks again (same ids) and so register again what they expect.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import timedelta

from fedcare.core.errors import TransportError
from fedcare.core.messages import TaskKind
from fedcare.core.wire import ReplyExpectation
from fedcare.hub.errors import TooManyPolls
from fedcare.hub.store import Database, TaskRepo
from fedcare.transport.base import Received

#: A task handed out this long ago and still unanswered is handed out again when its site
#: polls. A node works on one task at a time and polls only when idle, so such a task was
#: lost on the way: the hub was killed after recording the delivery but before (or while)
#: answering, the answer went to a dead long-poll, or the node died while working on it.
#: Without this the task stayed "delivered" forever, and after a hub restart every round
#: in progress timed out for every site that had it (and the study failed).
REDELIVER_AFTER = timedelta(seconds=5)
#: Long-polls one site may hold open at once. A node keeps one; a second covers a node that
#: restarted while the hub still holds its previous, abandoned poll. More are refused (429):
#: they can only come from a misbehaving or hostile client, and each open poll costs the hub
#: a coroutine and a socket (before the long-poll waited asynchronously, each held one of the
#: worker threads every other request needs, and one site could stall the whole hub).
MAX_POLLS_PER_SITE = 2
#: A long-poll waiting for a task looks at the site's offered tasks again at least this often
#: (a delivered task whose lease ran out is handed out again, see REDELIVER_AFTER).
RECHECK_EVERY = 1.0


@dataclass(frozen=True)
class Offer:
    """A task a running engine offers its site: the message as its two parts (``head`` is
    the task's own framing and header, ``body`` the arrays every site's task of the exchange
    shares - one object, not one copy per site) and the digest it travels with."""

    site: str
    study_id: str
    head: bytes
    body: bytes
    digest: str

    @property
    def size(self) -> int:
        return len(self.head) + len(self.body)


@dataclass(frozen=True)
class Awaited:
    """A task whose reply an engine waits for: the site it was sent to, its kind, and what
    the reply must look like."""

    site: str
    kind: TaskKind
    expect: ReplyExpectation


class _SiteWaiters:
    """The long-polls of one site waiting on the event loop, woken from any thread.

    An engine thread that offers a task calls :meth:`wake`, which schedules ``Event.set`` on
    each waiter's own loop with ``call_soon_threadsafe``: a waiting long-poll holds no thread.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def wake(self) -> None:
        with self.lock:
            waiting = list(self.events)
        for loop, event in waiting:
            with contextlib.suppress(RuntimeError):  # its loop is closed: nobody is waiting
                loop.call_soon_threadsafe(event.set)


class TaskMailbox:
    """Offers, long-polls and awaited replies of the hub's running engines.

    ``db``: where tasks are recorded (a poll hands out the site's oldest pending task among
    those offered, and records its delivery).
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._stopping = threading.Event()
        #: Each site's waiting long-polls (see :meth:`wait_for_task`).
        self._wake: dict[str, _SiteWaiters] = {}
        self._wake_lock = threading.Lock()
        #: Long-polls open per site, at most MAX_POLLS_PER_SITE (under _wake_lock).
        self._polls: dict[str, int] = {}
        #: When each site's last long-poll ended (under _wake_lock): `fedcare sites`.
        self._last_poll: dict[str, dt.datetime] = {}
        #: Offered tasks, by site then task id (see :meth:`offer`).
        self._offers: dict[str, dict[str, Offer]] = {}
        self._offers_lock = threading.Lock()
        #: Tasks whose reply an engine waits for, and its future (see :meth:`expect`).
        self._awaited: dict[str, tuple[Awaited, Future[Received]]] = {}
        self._awaited_lock = threading.Lock()

    # -- engines' side --------------------------------------------------------------------
    def expect(self, task_id: str, site: str, kind: TaskKind, expect: ReplyExpectation
               ) -> Future[Received]:
        """Wait for ``site``'s reply to ``task_id``, which must match ``expect``: the future
        :meth:`resolve` resolves. Registered before the task is offered, so no reply can
        arrive before it is awaited. A task expected again (a restarted engine) replaces
        the earlier wait, whose future is cancelled."""
        fut: Future[Received] = Future()
        with self._awaited_lock:
            old = self._awaited.get(task_id)
            self._awaited[task_id] = (Awaited(site, kind, expect), fut)
        if old is not None:
            old[1].cancel()
        return fut

    def offer(self, task_id: str, offer: Offer) -> None:
        """Make a stored task available to its site's long-poll.

        Task payloads are kept in memory only, never written to disk: a hub restarted
        mid-round replays the round from its last checkpoint, and its engine offers the same
        tasks again (same ids, rebuilt from the same model). Until then a task row left by
        the previous process is not handed out. Storing them cost a write, a sha256 and two
        fsyncs of each site's copy of the model per round, on the round's critical path."""
        with self._offers_lock:
            self._offers.setdefault(offer.site, {})[task_id] = offer
        self.notify_site(offer.site)

    def withdraw(self, prefix: str) -> None:
        """Stop offering the tasks whose id starts with ``prefix`` (their round or study is
        over), releasing their payloads; no reply to them is awaited any more (their futures
        are cancelled)."""
        with self._offers_lock:
            for site in list(self._offers):
                offers = self._offers[site]
                for tid in [t for t in offers if t.startswith(prefix)]:
                    del offers[tid]
                if not offers:
                    del self._offers[site]
        with self._awaited_lock:
            gone = [self._awaited.pop(t) for t in [t for t in self._awaited
                                                    if t.startswith(prefix)]]
        for _, fut in gone:
            fut.cancel()

    def withdraw_site(self, study_id: str, site: str, why: str) -> int:
        """Stop offering ``site`` the study's open tasks (it withdrew its approval: the
        model in them must not reach it) and fail their awaited replies with ``why``, so
        the round goes on without waiting for its deadline. Returns how many were open."""
        prefix = f"{study_id}/"
        with self._offers_lock:
            offers = self._offers.get(site, {})
            for tid in [t for t in offers if t.startswith(prefix)]:
                del offers[tid]
            if site in self._offers and not offers:
                del self._offers[site]
        with self._awaited_lock:
            mine = [t for t, (a, _) in self._awaited.items()
                    if t.startswith(prefix) and a.site == site]
            gone = [self._awaited.pop(t) for t in mine]
        for _, fut in gone:
            if not fut.done():
                fut.set_exception(TransportError(why, site=site))
        return len(gone)

    # -- the reply intake's side ----------------------------------------------------------
    def awaited(self, task_id: str) -> Awaited | None:
        """Who ``task_id`` was sent to and what its reply must be; None when no engine
        waits for it."""
        with self._awaited_lock:
            found = self._awaited.get(task_id)
        return None if found is None else found[0]

    def resolve(self, task_id: str, reply: Received) -> bool:
        """Hand ``reply`` to the engine waiting for ``task_id`` and stop offering the task.
        Refused (False) when no engine waits for it (never awaited, withdrawn, or resolved
        already): whoever takes the wait resolves its future, once."""
        with self._awaited_lock:
            found = self._awaited.pop(task_id, None)
        if found is None:
            return False
        awaited, fut = found
        with self._offers_lock:  # answered: no longer offered
            offers = self._offers.get(awaited.site, {})
            offers.pop(task_id, None)
            if not offers:
                self._offers.pop(awaited.site, None)
        if fut.done():  # cancelled by its engine meanwhile
            return False
        fut.set_result(reply)
        return True

    # -- sites' side ----------------------------------------------------------------------
    async def wait_for_task(self, site: str, wait: float) -> tuple[str, Offer] | None:
        """Long-poll: the site's oldest pending task (id and offer), or None after ``wait``
        seconds. Only tasks a running engine of this process offers are handed out, so a
        site that has nothing offered costs no database query while it waits.

        Waits on the event loop, holding no thread: an engine thread's :meth:`offer` wakes
        it (thread-safely). A site may hold :data:`MAX_POLLS_PER_SITE` of these at once;
        one more raises :class:`TooManyPolls`. Run it on the server's event loop.
        """
        deadline = time.monotonic() + max(0.0, min(wait, 60.0))
        with self._poll_slot(site):
            loop = asyncio.get_running_loop()
            waiters = self._waiters(site)
            woken = asyncio.Event()
            with waiters.lock:
                waiters.events.add((loop, woken))
            try:
                while not self._stopping.is_set():
                    # Cleared before looking: an offer made from now on sets it again, and
                    # the wait below returns at once (no offer slips between look and wait).
                    woken.clear()
                    found = await self._deliver_async(site)
                    if found is not None:
                        return found
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._stopping.is_set():
                        return None
                    # Woken by a new offer; else every RECHECK_EVERY s, for a delivered task
                    # whose lease ran out (handed out again, see REDELIVER_AFTER).
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(woken.wait(), min(remaining, RECHECK_EVERY))
                return None
            finally:
                with waiters.lock:
                    waiters.events.discard((loop, woken))

    def poll_activity(self) -> tuple[set[str], dict[str, dt.datetime]]:
        """The sites holding a long-poll now, and when each site's last long-poll ended."""
        with self._wake_lock:
            return {site for site, n in self._polls.items() if n}, dict(self._last_poll)

    def open_polls(self) -> dict[str, int]:
        """How many long-polls each site holds open now (sites holding none are left out)."""
        with self._wake_lock:
            return dict(self._polls)

    def notify_site(self, site: str) -> None:
        """Wake only the long-polls of ``site`` (a new task for one site wakes no other);
        safe from any thread."""
        self._waiters(site).wake()

    def stop(self) -> None:
        """Wake every waiting long-poll, which answers "no task"; later polls answer so at
        once."""
        self._stopping.set()
        with self._wake_lock:
            sites = list(self._wake.values())
        for waiters in sites:
            waiters.wake()

    @contextlib.contextmanager
    def _poll_slot(self, site: str) -> Iterator[None]:
        """One of the site's :data:`MAX_POLLS_PER_SITE` long-poll slots, or
        :class:`TooManyPolls`."""
        with self._wake_lock:
            if self._polls.get(site, 0) >= MAX_POLLS_PER_SITE:
                raise TooManyPolls(f"site {site} already holds {MAX_POLLS_PER_SITE} "
                                   "long-polls (GET /v1/node/task); a node needs one: wait "
                                   "for an answer before polling again")
            self._polls[site] = self._polls.get(site, 0) + 1
        try:
            yield
        finally:
            with self._wake_lock:
                self._last_poll[site] = dt.datetime.now(dt.UTC)
                self._polls[site] -= 1
                if not self._polls[site]:
                    del self._polls[site]

    async def _deliver_async(self, site: str) -> tuple[str, Offer] | None:
        """:meth:`_deliver` off the event loop (it queries the database), and not at all
        when nothing is offered to the site."""
        with self._offers_lock:
            if not self._offers.get(site):
                return None
        return await asyncio.to_thread(self._deliver, site)

    def _deliver(self, site: str) -> tuple[str, Offer] | None:
        with self._offers_lock:
            offered = list(self._offers.get(site, ()))
        if not offered:
            return None
        with self._db.session() as s:
            task = TaskRepo(s).next_pending_for(site, redeliver_after=REDELIVER_AFTER,
                                                among=offered)
            task_id = task.id if task is not None else None
        if task_id is None:
            return None
        with self._offers_lock:
            offer = self._offers.get(site, {}).get(task_id)
        # Withdrawn in the meantime (answered through a re-delivery, or its round ended):
        # the site is told nothing now and asks again.
        return None if offer is None else (task_id, offer)

    def _waiters(self, site: str) -> _SiteWaiters:
        with self._wake_lock:
            return self._wake.setdefault(site, _SiteWaiters())
