"""The hub's side of the one-method transport: tasks go to the database and the mailbox,
replies come back through the futures the mailbox resolves when a node posts them.

Task ids are deterministic, so a hub restarted mid-round re-creates the same tasks (a no-op
in the database) and offers their payloads again. A reply the previous process had accepted
is handed straight back to the engine when the hub keeps replies on disk; by default replies
are held in memory only, so its site is asked again, and the node sends the very reply it
computed before (it keeps its last one). Nothing is lost and nothing is counted twice.
A secure round is the exception: its protocol's state died with the process, so the round's
protocol runs again from its fit step as a new attempt (:meth:`HubTransport.protocol_attempt`).
Payloads themselves are held in memory while offered (see :meth:`TaskMailbox.offer`).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future

from fedcare.core.errors import TransportError, ValidationError
from fedcare.core.messages import TaskKind, task_attempt, task_id
from fedcare.core.wire import ReplyExpectation
from fedcare.hub.mailbox import Offer, TaskMailbox
from fedcare.hub.state import HubState
from fedcare.hub.store import NewTask, ReplyRepo, StudyRepo, TaskRepo
from fedcare.hub.store.errors import BlobCorrupted, BlobNotFound
from fedcare.transport.base import Outgoing, Received


class HubTransport:
    """One running study's transport. ``revoked``: whether a site is left out (its
    certificate is revoked, or it withdrew its approval of the study): its tasks are then
    never offered, so it is never sent the model again."""

    def __init__(self, mailbox: TaskMailbox, state: HubState, study_id: str, *,
                 revoked: Callable[[str], bool]) -> None:
        self.mailbox = mailbox
        self.state = state
        self.study_id = study_id
        self._revoked = revoked
        self._started_rounds: set[int] = set()

    def send(self, out: Outgoing) -> dict[str, Future[Received]]:
        """Record the exchange's tasks in one transaction, then offer them to their sites;
        a task answered before a restart gets its stored reply instead of being offered."""
        futures: dict[str, Future[Received]] = {}
        offers: dict[str, Offer] = {}
        tasks: dict[str, NewTask] = {}
        for site, payload in out.tasks.items():
            if self._revoked(site):
                # Never offered: the site could not fetch it anyway, and the round would wait
                # for it until its deadline.
                futures[site] = Future()
                futures[site].set_exception(TransportError(
                    f"site {site} is left out of this study (its certificate was revoked, or "
                    "it withdrew its approval: see the study's approvals)", site=site))
                continue
            digest = payload.digest()  # the exchange's arrays: one object, hashed once
            offers[site] = Offer(site, self.study_id, payload.head, payload.arrays.blob, digest)
            # The task row records the sha256 of the arrays it carries (the model it sent).
            tasks[site] = NewTask(self.study_id, out.round, site, out.kind,
                                  digest.rsplit(":", 1)[-1], attempt=out.attempt)
            sent = task_id(self.study_id, out.round, out.kind, site, out.attempt)
            if tasks[site].id != sent:
                raise TransportError(f"task {sent!r} does not have the id the hub's store "
                                     f"gives it ({tasks[site].id!r})")
        for site, task in tasks.items():  # awaited before anyone can fetch it
            futures[site] = self.mailbox.expect(task.id, site, out.kind, out.expect)
        futures = {site: futures[site] for site in out.tasks}  # in the exchange's order
        if not tasks:
            return futures
        with self.state.db.session() as s:
            fits = {t.round for t in tasks.values() if t.kind is TaskKind.FIT}
            for round_ in sorted(fits - self._started_rounds):
                StudyRepo(s).start_round(self.study_id, round_)
                self._started_rounds.add(round_)
            TaskRepo(s).create_many(tasks.values())
            answered = ReplyRepo(s).answered([t.id for t in tasks.values()])
        for site, task in tasks.items():
            # Answered before a restart: reuse the stored reply if the hub kept it.
            if task.id not in answered or not self._reuse(task.id, site, out.expect,
                                                          answered[task.id]):
                self.mailbox.offer(task.id, offers[site])
                self.state.audit.task_sent(task.id, out.kind.value, out.round, site,
                                           offers[site].digest)
        return futures

    def protocol_attempt(self, round_: int) -> int:
        """The attempt at round ``round_``'s secure protocol to run now: one more than the
        attempts whose fit tasks earlier hub processes created (1 when none did). A hub killed
        mid-round lost the protocol's state (keys, routed shares, the masked sum), which
        cannot be resumed: the round's protocol runs again, from its fit step, as new tasks;
        each node re-enters the update it trained for the round (no second training, no
        second privacy charge), with fresh keys."""
        with self.state.db.session() as s:
            started = [task_attempt(t.id) for t in TaskRepo(s).for_round(self.study_id, round_)
                       if t.kind is TaskKind.FIT]
        attempt = max(started, default=0) + 1
        if attempt > 1:
            self.state.event("recovery", f"round {round_}'s secure aggregation was under way "
                             f"when the hub stopped; running it again (attempt {attempt}) "
                             "with fresh keys, on the updates the sites already trained",
                             study_id=self.study_id)
        return attempt

    def _reuse(self, task_id: str, site: str, expect: ReplyExpectation,
               reply_sha: str) -> bool:
        """Resolve the task's future with the stored reply; False when the hub has not got
        its bytes (the task is then reopened and must be offered again)."""
        state = self.state
        try:
            stored = state.blobs.get(reply_sha)
            reply = expect.decode(stored, site=site)
        except (BlobNotFound, BlobCorrupted, ValidationError) as exc:
            why = (f"is unreadable ({exc})" if state.keep_replies
                   or not isinstance(exc, BlobNotFound)
                   else "was held in memory by the previous hub process (replies are written "
                        "to disk only with --keep-replies)")
            state.event("recovery", f"the reply to {task_id} {why}; asking its site again",
                        study_id=self.study_id)
            with state.db.session() as s:
                ReplyRepo(s).forget(task_id)
            return False
        # Refused when a node's reply arrived meanwhile: the intake, which took the wait,
        # resolved the future itself (whoever takes the wait resolves it, once).
        self.mailbox.resolve(task_id, Received(reply, len(stored)))
        return True

    def close(self) -> None:
        """The study's engine is done: stop offering its tasks and awaiting their replies."""
        self.mailbox.withdraw(f"{self.study_id}/")
