"""The hub's side of the one-method transport: tasks go to the database, replies come back
through futures resolved by the API when a node posts them.

Task ids are deterministic, so a hub restarted mid-round re-creates the same tasks (a no-op
in the database) and offers their payloads again, and any reply that was already accepted is
handed straight back to the engine: nothing is lost and nothing is counted twice. Payloads
themselves are held in memory while offered (see :meth:`HubService.offer`).
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import TYPE_CHECKING

from fedcare.core.errors import TransportError
from fedcare.core.messages import TaskKind
from fedcare.core.wire import Reply, TaskPayload, payload_digest, peek_header
from fedcare.hub.store import NewTask, ReplyRepo, StudyRepo, TaskRepo

if TYPE_CHECKING:
    from fedcare.hub.service import HubService


class HubTransport:
    def __init__(self, service: HubService, study_id: str) -> None:
        self.service = service
        self.study_id = study_id
        self._started_rounds: set[int] = set()

    def submit(self, site: str, payload: bytes | TaskPayload) -> Future[Reply]:
        from fedcare.hub.service import Offer

        svc = self.service
        fut: Future[Reply] = Future()
        if isinstance(payload, TaskPayload):  # the exchange's arrays: one object, hashed once
            head, body, digest = payload.head, payload.arrays.blob, payload.digest()
        else:
            head, body, digest = payload, b"", payload_digest(payload)
        header = peek_header(head)
        round_, kind = int(header["round"]), TaskKind(header["kind"])
        if self._revoked(site):
            # Never offered: the site could not fetch it anyway, and the round would wait
            # for it until its deadline.
            fut.set_exception(TransportError(
                f"site {site} has been revoked; it is left out of this study", site=site))
            return fut
        # The task row records the sha256 of the arrays it carries (the model it sent).
        task = NewTask(self.study_id, round_, site, kind, digest.rsplit(":", 1)[-1])
        with svc.waiters_lock:
            svc.waiters[task.id] = fut
        with svc.db.session() as s:
            if kind is TaskKind.FIT and round_ not in self._started_rounds:
                StudyRepo(s).start_round(self.study_id, round_)
                self._started_rounds.add(round_)
            TaskRepo(s).create_many([task])
            svc.note_task(task.id, site, kind, self.study_id)
            reply = ReplyRepo(s).get(task.id)
            reply_sha = None if reply is None else reply.blob_sha
        if reply_sha is not None:  # answered before a restart: reuse, never ask twice
            with svc.waiters_lock:
                ours = svc.waiters.pop(task.id, None) is fut
            if not ours:
                # A node's reply arrived meanwhile: receive_reply took the waiter and resolves
                # the future itself (whoever pops the waiter resolves it, exactly once).
                return fut
            try:
                fut.set_result(svc.blobs.get(reply_sha))
            except Exception as exc:  # noqa: BLE001 (a corrupt stored reply fails this site only)
                fut.set_exception(TransportError(f"stored reply unreadable: {exc}", site=site))
            return fut
        svc.offer(task.id, Offer(site, self.study_id, round_, head, body, digest))
        return fut

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

