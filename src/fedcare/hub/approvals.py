"""The hub's side of study approval: a submitted study waits (*pending approval*) until every
participating site's node reported its steward's approval of the study's content hash, then
starts; a site's rejection (or its node's refusal) ends it ``rejected`` with that site's
reason; its deadline (``study.approval_deadline_hours``) ends it ``expired``, naming the sites
that did not decide. The decision rule is :func:`fedcare.governance.approvals.verdict`.

After the start, a site whose approval is withdrawn (revoked, or a task refused) is left out
of every later round: :meth:`ApprovalDesk.withdrawn` is part of the study transport's check
(:class:`~fedcare.hub.transport.HubTransport`), so it is never sent the model again; the round
engine treats it like a site that stopped answering (the study continues while its strategy
has enough sites, else fails).

Every decision is in the database (``site_decisions``, so a hub restarted while a study
waits still knows them), the study's event log and the hub's signed audit trail.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from fedcare.core.errors import ValidationError
from fedcare.engine.history import timestamp
from fedcare.governance.approvals import Decision, VerdictKind, verdict, withdrawn
from fedcare.hub.errors import NotFound
from fedcare.hub.state import HubState
from fedcare.hub.store import DecisionRepo, InvalidTransition, Study, StudyRepo, StudyStatus

log = logging.getLogger("fedcare.hub")

#: How often waiting studies are checked against their deadline (seconds).
DEADLINE_CHECK = 5.0
#: ``study.approval_deadline_hours`` when a stored config has none.
DEFAULT_DEADLINE_HOURS = 168.0


def deadline_of(study: Study) -> dt.datetime:
    hours = (study.config or {}).get("study", {}).get("approval_deadline_hours")
    return study.created_at + dt.timedelta(hours=float(hours or DEFAULT_DEADLINE_HOURS))


def decision_rows(found: Mapping[str, tuple[Decision, str | None, dt.datetime]]
                  ) -> list[dict[str, Any]]:
    """``[{site, decision, reason, time}]`` for a study's status document."""
    return [{"site": site, "decision": d.value, "reason": why, "time": timestamp(at)}
            for site, (d, why, at) in found.items()]


class ApprovalDesk:
    """Sites' decisions in, studies started or ended. ``launch``: run a study whose sites
    all approved (:meth:`StudyRunner.launch`)."""

    def __init__(self, state: HubState, *, launch: Callable[[str], None],
                 withdraw: Callable[[str, str, str], int] = lambda study, site, why: 0
                 ) -> None:
        self.state = state
        self._launch = launch
        #: Stop offering a site the study's open tasks (:meth:`TaskMailbox.withdraw_site`).
        self._withdraw = withdraw
        #: One study moves out of pending approval once, whoever (a decision, the deadline
        #: check) sees it first.
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Decide every study still waiting (the hub may have stopped between the last
        approval and the start), then keep checking deadlines in a thread."""
        self.check_all()
        self._thread = threading.Thread(target=self._watch, name="approval-deadlines",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(DEADLINE_CHECK):
            try:
                self.check_all()
            except Exception:
                log.exception("checking studies' approval deadlines failed")

    def check_all(self) -> None:
        with self.state.db.session() as s:
            waiting = [st.id for st in StudyRepo(s).list(status=StudyStatus.PENDING_APPROVAL)]
        for study_id in waiting:
            self.evaluate(study_id)

    # -- decisions ------------------------------------------------------------------------
    def record(self, site: str, study_id: str, decision: Decision, content_hash: str,
               reason: str | None) -> dict[str, Any]:
        """A site's node reports its decision on a study that names it."""
        with self.state.db.session() as s:
            study = StudyRepo(s).get(study_id)
            if study is None or site not in (study.sites or []):
                raise NotFound(f"no study {study_id!r} for site {site}")
            if decision is Decision.APPROVED and content_hash != study.config_hash:
                # Only an approval of exactly the study's hash counts (a refusal always does).
                raise ValidationError(
                    f"site {site} approved content hash {content_hash[:16]}..., but study "
                    f"{study_id} has hash {study.config_hash[:16]}...; the approval does not "
                    "apply to it")
            DecisionRepo(s).record(study_id, site, decision, content_hash, reason)
            status = study.status
        why = f": {reason}" if reason else ""
        self.state.event("approval", f"site {site} {decision.value} the study{why}",
                         study_id=study_id, site=site)
        self.state.audit.site_decided(study_id, site, decision.value, content_hash, reason)
        if decision.negative and status is StudyStatus.RUNNING:
            # Its open tasks too: one offered before the decision arrived still holds the
            # model, and would otherwise be handed over at the site's next poll.
            self._withdraw(study_id, site, f"site {site} {decision.value} the study{why}")
            self.state.event("approval", f"site {site} is left out of the study's later "
                             "rounds (it is never sent the model again)", study_id=study_id,
                             site=site)
        self.evaluate(study_id)
        return {"study_id": study_id, "site": site, "decision": decision.value}

    def evaluate(self, study_id: str) -> None:
        """Start, reject or expire a study waiting for approval, if its decisions say so."""
        with self._lock, self.state.db.session() as s:
            study = StudyRepo(s).get(study_id)
            if study is None or study.status is not StudyStatus.PENDING_APPROVAL:
                return
            got = {site: (d, why) for site, (d, why, _) in
                   DecisionRepo(s).for_study(study_id).items()}
            expired = dt.datetime.now(dt.UTC) >= deadline_of(study)
            result = verdict(study.sites, got, expired=expired)
            if result.kind is VerdictKind.WAITING:
                return
            status = {VerdictKind.APPROVED: StudyStatus.RUNNING,
                      VerdictKind.REJECTED: StudyStatus.REJECTED,
                      VerdictKind.EXPIRED: StudyStatus.EXPIRED}[result.kind]
            try:
                StudyRepo(s).set_status(study_id, status, error=result.reason)
            except InvalidTransition as exc:  # cancelled meanwhile, say
                log.warning("%s", exc)
                return
        if status is StudyStatus.RUNNING:
            self.state.event("study", "every site approved the study: it starts",
                             study_id=study_id)
            self._launch(study_id)
            return
        self.state.event("study", f"study {study_id} {status.value}: {result.reason}",
                         study_id=study_id)
        self.state.audit.study_ended(study_id, status.value, result.reason)

    # -- reads ----------------------------------------------------------------------------
    def withdrawn(self, study_id: str, site: str) -> bool:
        """Whether ``site`` withdrew from the running study (revoked, rejected, refused)."""
        with self.state.db.session() as s:
            return withdrawn(DecisionRepo(s).get(study_id, site))


    def pending_for(self, site: str) -> list[dict[str, Any]]:
        """The studies waiting for ``site``'s decision: those pending approval that name it
        and that it has not decided yet (its node recomputes each hash from the config)."""
        out = []
        with self.state.db.session() as s:
            for st in StudyRepo(s).list(status=StudyStatus.PENDING_APPROVAL):
                if site in (st.sites or []) and DecisionRepo(s).get(st.id, site) is None:
                    out.append({"study_id": st.id, "name": st.name, "config": st.config,
                                "config_hash": st.config_hash, "sites": st.sites,
                                "deadline": timestamp(deadline_of(st))})
        return out
