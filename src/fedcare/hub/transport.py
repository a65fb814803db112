"""The hub's side of the one-method transport: tasks go to the database, replies come back
through futures resolved by the API when a node posts them.

Task ids are deterministic, so a hub restarted mid-round re-creates the same tasks (a no-op
in the database) and offers their payloads again. A reply the previous process had accepted
is handed straight back to the engine when the hub keeps replies on disk; by default replies
are held in memory only, so its site is asked again, and the node sends the very reply it
computed before (it keeps its last one). Nothing is lost and nothing is counted twice.
A secure round is the exception: its protocol's state died with the process, so the round's
protocol runs again from its fit step as a new attempt (:meth:`HubTransport.protocol_attempt`).
Payloads themselves are held in memory while offered (see :meth:`HubService.offer`).
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING

from fedcare.core.errors import TransportError
from fedcare.core.messages import TaskKind, task_attempt
from fedcare.core.wire import Reply, TaskPayload, payload_digest, peek_header
from fedcare.hub.store import NewTask, ReplyRepo, StudyRepo, TaskRepo
from fedcare.hub.store.errors import BlobCorrupted, BlobNotFound

if TYPE_CHECKING:
    from fedcare.hub.service import HubService


class HubTransport:
    def __init__(self, service: HubService, study_id: str) -> None:
        self.service = service
        self.study_id = study_id
        self._started_rounds: set[int] = set()

    def send(self, payloads: Mapping[str, bytes | TaskPayload]) -> dict[str, Future[Reply]]:
        """Record the exchange's tasks in one transaction, then offer them to their sites;
        a task answered before a restart gets its stored reply instead of being offered."""
        from fedcare.hub.service import Offer

        svc = self.service
        futures: dict[str, Future[Reply]] = {site: Future() for site in payloads}
        offers: dict[str, Offer] = {}
        tasks: dict[str, NewTask] = {}
        for site, payload in payloads.items():
            if self._revoked(site):
                # Never offered: the site could not fetch it anyway, and the round would wait
                # for it until its deadline.
                futures[site].set_exception(TransportError(
                    f"site {site} has been revoked; it is left out of this study", site=site))
                continue
            if isinstance(payload, TaskPayload):  # the exchange's arrays: one object, hashed once
                head, body, digest = payload.head, payload.arrays.blob, payload.digest()
            else:
                head, body, digest = payload, b"", payload_digest(payload)
            header = peek_header(head)
            round_, kind = int(header["round"]), TaskKind(header["kind"])
            offers[site] = Offer(site, self.study_id, head, body, digest)
            # The task row records the sha256 of the arrays it carries (the model it sent).
            tasks[site] = NewTask(self.study_id, round_, site, kind, digest.rsplit(":", 1)[-1],
                                  attempt=task_attempt(str(header["task_id"])))
            if tasks[site].id != header["task_id"]:
                raise TransportError(f"task {header['task_id']!r} does not have the id the "
                                     f"hub's store gives it ({tasks[site].id!r})")
        if not tasks:
            return futures
        with svc.waiters_lock:
            for site, task in tasks.items():
                svc.waiters[task.id] = futures[site]
        with svc.db.session() as s:
            fits = {t.round for t in tasks.values() if t.kind is TaskKind.FIT}
            for round_ in sorted(fits - self._started_rounds):
                StudyRepo(s).start_round(self.study_id, round_)
                self._started_rounds.add(round_)
            TaskRepo(s).create_many(tasks.values())
            for site, task in tasks.items():
                svc.note_task(task.id, site, task.kind, self.study_id)
            answered = ReplyRepo(s).answered([t.id for t in tasks.values()])
        for site, task in tasks.items():
            # Answered before a restart: reuse the stored reply if the hub kept it.
            if task.id not in answered or not self._reuse(task.id, futures[site],
                                                          answered[task.id]):
                svc.offer(task.id, offers[site])
        return futures

    def protocol_attempt(self, round_: int) -> int:
        """The attempt at round ``round_``'s secure protocol to run now: one more than the
        attempts whose fit tasks earlier hub processes created (1 when none did). A hub killed
        mid-round lost the protocol's state (keys, routed shares, the masked sum), which
        cannot be resumed: the round's protocol runs again, from its fit step, as new tasks;
        each node re-enters the update it trained for the round (no second training, no
        second privacy charge), with fresh keys."""
        with self.service.db.session() as s:
            started = [task_attempt(t.id) for t in TaskRepo(s).for_round(self.study_id, round_)
                       if t.kind is TaskKind.FIT]
        attempt = max(started, default=0) + 1
        if attempt > 1:
            self.service.event("recovery", f"round {round_}'s secure aggregation was under way "
                               f"when the hub stopped; running it again (attempt {attempt}) "
                               "with fresh keys, on the updates the sites already trained",
                               study_id=self.study_id)
        return attempt

    def _reuse(self, task_id: str, fut: Future[Reply], reply_sha: str) -> bool:
        """Resolve ``fut`` with the stored reply; False when the hub has not got its bytes
        (the task is then reopened and must be offered again)."""
        svc = self.service
        try:
            stored = svc.blobs.get(reply_sha)
        except (BlobNotFound, BlobCorrupted) as exc:
            why = (f"is unreadable ({exc})" if svc.keep_replies or isinstance(exc, BlobCorrupted)
                   else "was held in memory by the previous hub process (replies are written "
                        "to disk only with --keep-replies)")
            svc.event("recovery", f"the reply to {task_id} {why}; asking its site again",
                      study_id=self.study_id)
            with svc.db.session() as s:
                ReplyRepo(s).forget(task_id)
            return False
        with svc.waiters_lock:
            ours = svc.waiters.pop(task_id, None) is fut
        # Not ours: a node's reply arrived meanwhile, and receive_reply, which took the
        # waiter, resolves the future itself (whoever pops the waiter resolves it, once).
        if ours:
            fut.set_result(stored)
        return True

    def _revoked(self, site: str) -> bool:
        serial = self.service.site_serial(site)
        return serial is not None and self.service.is_revoked(serial)

    def close(self) -> None:
        prefix = f"{self.study_id}/"
        with self.service.waiters_lock:
            for tid in [t for t in self.service.waiters if t.startswith(prefix)]:
                self.service.waiters.pop(tid).cancel()
        self.service.withdraw(lambda tid: tid.startswith(prefix))
        self.service.forget_tasks(prefix)

