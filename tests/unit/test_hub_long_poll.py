"""The hub's long-poll (``HubService.next_task``) waits on the event loop: many open polls
hold no thread, an offer made from an engine thread wakes only its site's polls, a site may
hold at most MAX_POLLS_PER_SITE of them, and stopping the hub answers every waiting poll."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fedcare.hub import mailbox as mailbox_module
from fedcare.hub.service import MAX_POLLS_PER_SITE, HubService, NeverRevoked, TooManyPolls


@pytest.fixture
def service(tmp_path: Path) -> Iterator[HubService]:
    svc = HubService(tmp_path / "hub", revocation=NeverRevoked())
    try:
        yield svc
    finally:
        svc.stop()
        svc.db.dispose()


def test_waiting_long_polls_hold_no_thread(service: HubService) -> None:
    sites = [f"site{i}" for i in range(50)]

    async def scenario() -> tuple[int, int, list[object]]:
        before = threading.active_count()
        polls = [asyncio.create_task(service.next_task(s, 30)) for s in sites]
        await asyncio.sleep(0.5)  # every poll is waiting now
        during = threading.active_count()
        service.stop()  # answers them all
        return before, during, await asyncio.wait_for(asyncio.gather(*polls), 10)

    before, during, answers = asyncio.run(scenario())
    # With one worker thread per poll (the old run_in_threadpool) this was +50.
    assert during - before <= 2
    assert answers == [None] * len(sites)


def test_an_offer_from_another_thread_wakes_only_its_sites_polls(
        service: HubService, monkeypatch: pytest.MonkeyPatch) -> None:
    # No periodic recheck within the test: only a wake can make a poll look again.
    monkeypatch.setattr(mailbox_module, "RECHECK_EVERY", 600.0)
    woken: list[str] = []

    async def poll(site: str) -> None:
        await service.next_task(site, 20)
        woken.append(site)

    async def scenario() -> None:
        polls = [asyncio.create_task(poll(s)) for s in ("a", "b")]
        await asyncio.sleep(0.3)
        # An engine thread offering a task for "a": nothing in the store to hand out, so
        # the woken poll looks, finds nothing and waits again - but it was woken (below).
        seen: list[object] = []
        original = service.mailbox._deliver

        def counting(site: str) -> object:
            seen.append(site)
            return original(site)

        service.mailbox._deliver = counting  # type: ignore[method-assign]
        with service.mailbox._offers_lock:
            service.mailbox._offers.setdefault("a", {})["t"] = object()  # type: ignore[dict-item]
        threading.Thread(target=service.mailbox.notify_site, args=("a",)).start()
        await asyncio.wait_for(_until(lambda: bool(seen)), 30)
        await asyncio.sleep(0.2)
        assert seen == ["a"]  # b's poll was not woken
        assert woken == []  # a's poll found nothing to hand out and waits again
        service.stop()
        await asyncio.wait_for(asyncio.gather(*polls), 10)

    asyncio.run(scenario())
    assert sorted(woken) == ["a", "b"]


async def _until(check: Callable[[], bool]) -> None:
    while not check():
        await asyncio.sleep(0.01)


def test_a_site_may_hold_only_a_few_long_polls(service: HubService) -> None:
    async def scenario() -> None:
        held = [asyncio.create_task(service.next_task("greedy", 30))
                for _ in range(MAX_POLLS_PER_SITE)]
        await asyncio.sleep(0.2)
        with pytest.raises(TooManyPolls, match="already holds"):
            await service.next_task("greedy", 30)
        assert await service.next_task("other", 0) is None  # other sites are not affected
        service.stop()
        assert await asyncio.gather(*held) == [None] * MAX_POLLS_PER_SITE
        # slots are given back when a poll ends
        assert service.mailbox.open_polls() == {}

    asyncio.run(scenario())


def test_a_poll_ends_after_its_wait(service: HubService) -> None:
    async def scenario() -> float:
        start = time.monotonic()
        assert await service.next_task("idle", 0.3) is None
        return time.monotonic() - start

    assert 0.25 <= asyncio.run(scenario()) < 5
