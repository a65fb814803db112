"""The hub's task mailbox on its own (:class:`TaskMailbox`): offers and long-polls, the
wake-up of a waiting poll, withdrawing, the per-site poll limit, and awaited replies; and the
reply intake's use of the engine's expectation (:class:`ReplyIntake`)."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedcare.core.errors import ValidationError
from fedcare.core.messages import TaskKind, Update, UpdateKind
from fedcare.core.params import Parameters, ParamSpec
from fedcare.core.wire import ReplyExpectation, encode_update
from fedcare.hub import mailbox as mailbox_module
from fedcare.hub.errors import NotAwaited, TooManyPolls
from fedcare.hub.intake import ReplyIntake
from fedcare.hub.mailbox import MAX_POLLS_PER_SITE, Offer, TaskMailbox
from fedcare.hub.state import HubState
from fedcare.hub.store import (
    BlobStore,
    Database,
    DuplicateReply,
    NewTask,
    StudyRepo,
    TaskRepo,
    UnknownTask,
    WrongSite,
)
from fedcare.transport.base import Received

SHA = "ab" * 32
MODEL = Parameters({"w": np.zeros(3, np.float32)})
EXPECT = ReplyExpectation(MODEL.spec, {})


@pytest.fixture
def state(tmp_path: Path) -> Iterator[HubState]:
    db = Database.for_data_dir(tmp_path)
    db.migrate()
    try:
        yield HubState(tmp_path, db, BlobStore(tmp_path / "blobs"))
    finally:
        db.dispose()


@pytest.fixture
def mailbox(state: HubState) -> Iterator[TaskMailbox]:
    box = TaskMailbox(state.db)
    try:
        yield box
    finally:
        box.stop()


def _task(state: HubState, site: str = "a", round_: int = 1) -> str:
    """A stored fit task of study "s" for ``site`` (the study is made on first use)."""
    with state.db.session() as s:
        if StudyRepo(s).get("s") is None:
            StudyRepo(s).create("s", {}, "0" * 64, ["a", "b"], 3, study_id="s")
        task = NewTask("s", round_, site, TaskKind.FIT, SHA)
        TaskRepo(s).create_many([task])
    return task.id


def _offer(site: str = "a") -> Offer:
    return Offer(site, "s", b"head", b"body", "d:d")


def _received(task_id: str = "s/r1/fit/a") -> Received:
    update = Update(task_id, "a", 1, UpdateKind.FULL, MODEL, 10)
    return Received(update, 1)


def test_an_offered_task_is_handed_to_its_sites_next_poll(state: HubState,
                                                          mailbox: TaskMailbox) -> None:
    tid = _task(state)
    mailbox.offer(tid, _offer())
    assert asyncio.run(mailbox.wait_for_task("b", 0)) is None  # not b's
    found = asyncio.run(mailbox.wait_for_task("a", 5))
    assert found == (tid, _offer())
    # Delivered: not handed out again until its lease runs out (REDELIVER_AFTER).
    assert asyncio.run(mailbox.wait_for_task("a", 0)) is None


def test_a_waiting_poll_is_woken_by_an_offer_from_another_thread(
        state: HubState, mailbox: TaskMailbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mailbox_module, "RECHECK_EVERY", 600.0)  # only a wake-up helps
    tid = _task(state)

    async def scenario() -> tuple[object, float]:
        start = time.monotonic()
        poll = asyncio.create_task(mailbox.wait_for_task("a", 30))
        await asyncio.sleep(0.3)
        assert not poll.done()
        threading.Thread(target=mailbox.offer, args=(tid, _offer())).start()
        found = await asyncio.wait_for(poll, 10)
        return found, time.monotonic() - start

    found, seconds = asyncio.run(scenario())
    assert found == (tid, _offer()) and seconds < 10


def test_a_withdrawn_task_is_neither_offered_nor_awaited(state: HubState,
                                                         mailbox: TaskMailbox) -> None:
    tid, other = _task(state), _task(state, round_=2)
    fut = mailbox.expect(tid, "a", TaskKind.FIT, EXPECT)
    mailbox.offer(tid, _offer())
    mailbox.offer(other, _offer())
    mailbox.withdraw("s/r1/")
    assert fut.cancelled() and mailbox.awaited(tid) is None
    assert not mailbox.resolve(tid, _received(tid))
    assert asyncio.run(mailbox.wait_for_task("a", 1)) == (other, _offer())  # round 2 stays


def test_a_site_holds_at_most_two_polls(mailbox: TaskMailbox) -> None:
    async def scenario() -> None:
        held = [asyncio.create_task(mailbox.wait_for_task("a", 30))
                for _ in range(MAX_POLLS_PER_SITE)]
        await asyncio.sleep(0.2)
        assert mailbox.open_polls() == {"a": MAX_POLLS_PER_SITE}
        with pytest.raises(TooManyPolls, match="already holds 2"):
            await mailbox.wait_for_task("a", 30)
        assert await mailbox.wait_for_task("b", 0) is None  # another site is not affected
        mailbox.stop()
        assert await asyncio.wait_for(asyncio.gather(*held), 10) == [None, None]

    assert MAX_POLLS_PER_SITE == 2
    asyncio.run(scenario())
    assert mailbox.open_polls() == {}
    polling, last = mailbox.poll_activity()
    assert not polling and set(last) == {"a", "b"}


def test_an_awaited_reply_resolves_its_future_once_and_ends_its_offer(
        state: HubState, mailbox: TaskMailbox) -> None:
    tid = _task(state)
    fut = mailbox.expect(tid, "a", TaskKind.FIT, EXPECT)
    mailbox.offer(tid, _offer())
    awaited = mailbox.awaited(tid)
    assert awaited is not None and (awaited.site, awaited.kind) == ("a", TaskKind.FIT)
    assert awaited.expect is EXPECT
    reply = _received(tid)
    assert mailbox.resolve(tid, reply)
    assert fut.result(timeout=0) is reply
    assert not mailbox.resolve(tid, reply)  # resolved once
    assert mailbox.awaited(tid) is None
    assert asyncio.run(mailbox.wait_for_task("a", 0)) is None  # answered: no longer offered


def test_a_reply_to_a_task_nobody_awaits_is_refused(state: HubState,
                                                   mailbox: TaskMailbox) -> None:
    assert not mailbox.resolve("s/r1/fit/nobody", _received())
    tid = _task(state)
    first = mailbox.expect(tid, "a", TaskKind.FIT, EXPECT)
    again = mailbox.expect(tid, "a", TaskKind.FIT, EXPECT)  # a restarted engine asks again
    assert first.cancelled() and not again.done()
    assert mailbox.resolve(tid, _received(tid)) and again.done()


# -- the reply intake validates with the engine's expectation --------------------------------
def _reply(task_id: str, site: str = "a", size: int = 3) -> bytes:
    params = Parameters({"w": np.ones(size, np.float32)})
    return encode_update(Update(task_id, site, 1, UpdateKind.FULL, params, 10))


def _post(intake: ReplyIntake, site: str, task_id: str, body: bytes) -> None:
    intake.receive(site, task_id, body, hashlib.sha256(body).hexdigest())


def _delivered(state: HubState, site: str = "a") -> str:
    tid = _task(state, site)
    with state.db.session() as s:
        assert TaskRepo(s).next_pending_for(site) is not None
    return tid


def test_the_intake_decodes_with_the_awaited_expectation_and_refuses_what_is_not_awaited(
        state: HubState, mailbox: TaskMailbox) -> None:
    intake = ReplyIntake(state, mailbox)
    tid = _delivered(state)
    body = _reply(tid)
    # No running engine awaits it (a restarted hub, say): refused, nothing recorded; the
    # node keeps the reply and sends it again when the task is offered again.
    with pytest.raises(NotAwaited, match="not awaited"):
        _post(intake, "a", tid, body)
    with pytest.raises(UnknownTask):
        _post(intake, "a", "s/r9/fit/a", _reply("s/r9/fit/a"))
    with pytest.raises(WrongSite):
        _post(intake, "b", tid, body)

    fut = mailbox.expect(tid, "a", TaskKind.FIT, EXPECT)
    with pytest.raises(WrongSite):
        _post(intake, "b", tid, body)
    with pytest.raises(ValidationError, match="update parameters"):  # another layout
        _post(intake, "a", tid, _reply(tid, size=4))
    assert not fut.done()
    _post(intake, "a", tid, body)
    got = fut.result(timeout=0)
    assert isinstance(got.reply, Update) and got.size == len(body)
    np.testing.assert_array_equal(got.reply.parameters["w"], np.ones(3, np.float32))
    with pytest.raises(DuplicateReply, match="already answered"):
        _post(intake, "a", tid, body)


def test_an_expectation_accepts_only_its_layout() -> None:
    assert isinstance(EXPECT.decode(_reply("t"), site="a"), Update)
    with pytest.raises(ValidationError, match=r"\[site a\] update parameters"):
        ReplyExpectation(ParamSpec({}), {}).decode(_reply("t"), site="a")
    with pytest.raises(ValidationError, match="lacks auxiliary arrays 'c'"):
        ReplyExpectation(MODEL.spec, {"c": None}).decode(_reply("t"), site="a")


def test_a_reply_header_is_parsed_once_on_its_way_in(
        state: HubState, mailbox: TaskMailbox, monkeypatch: pytest.MonkeyPatch) -> None:
    from fedcare.core import wire

    calls: list[int] = []
    real = wire.unframe

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(wire, "unframe", counting)
    tid = _delivered(state)
    fut = mailbox.expect(tid, "a", TaskKind.FIT, EXPECT)
    _post(ReplyIntake(state, mailbox), "a", tid, _reply(tid))
    assert fut.done() and len(calls) == 1  # was 3: peek, decode_reply, decode_update
    calls.clear()
    wire.decode_reply(_reply(tid), MODEL.spec)
    assert len(calls) == 1
