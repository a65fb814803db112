"""The hub's output airlock: export requests for a study's files, their automatic checks,
the site stewards' decisions, and the download of exactly the bytes that were approved.

One job: carry a request through the rules of :mod:`fedcare.governance.airlock` (which decide)
with the hub's database (:class:`~fedcare.hub.store.exports.ExportRepo`), files and audit
trail. Who may call what (the requester, a participating site's steward, an auditor) is the
API's (:mod:`fedcare.hub.airlock_api`); this desk takes the acting user and site as given.

* ``request``: the file's SHA-256 is taken when the request is made, the checks run on those
  bytes, and every later step names that digest. The small-cell threshold is the strictest
  of the participating sites' thresholds the hub knows (the ``min_cell`` of the quality
  report each site sent for the study's dataset), never below 10.
* ``decide``: one decision per participating site; any rejection rejects; the quorum (the
  study's ``airlock.quorum``, default every participating site) approves.
* ``download``: only an approved request, only its requester; the file is read again and
  served only if it still has the digest the stewards approved (a file changed on the
  hub's disk afterwards is refused, and the refusal is logged).

Every step is appended to the hub's signed audit trail (digests, never content) and to the
study's event log.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcare.core.errors import ValidationError
from fedcare.engine.history import timestamp
from fedcare.governance.airlock import (
    DEFAULT_MIN_CELL,
    MAX_CHECKED_BYTES,
    AirlockError,
    CheckResult,
    Decision,
    ExportConflict,
    ExportForbidden,
    ExportStatus,
    artifact_kind,
    decide,
    downloadable,
    opened,
    quorum_of,
    run_checks,
    strictest_min_cell,
)
from fedcare.hub.errors import NotFound
from fedcare.hub.state import HubState
from fedcare.hub.store import Site, SiteRepo, StudyRepo
from fedcare.hub.store.exports import ExportRepo
from fedcare.hub.store.models import ExportRequest, Study, utcnow

#: A study file's name: no path, no hidden file.
ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")
#: A reason (the requester's, a steward's) is kept and shown, so it is bounded.
MAX_REASON = 2000
#: The table a study's report is rendered from (checked in the report's place).
REPORT_SOURCE = "history.json"


@dataclass(frozen=True)
class Released:
    """The bytes of an approved export, checked against the approved digest."""

    name: str
    data: bytes
    digest: str


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ExportDesk:
    def __init__(self, state: HubState) -> None:
        self.state = state

    # -- reading ----------------------------------------------------------------------
    def get(self, export_id: str) -> dict[str, Any]:
        with self.state.db.session() as s:
            repo = ExportRepo(s)
            row = repo.get(export_id)
            if row is None:
                raise NotFound(f"no export request {export_id!r}")
            return _view(repo, row)

    def list(self, *, requester: str | None = None,
             site: str | None = None) -> list[dict[str, Any]]:
        """Requests, oldest first: all of them, only ``requester``'s, or only those of studies
        in which ``site`` takes part."""
        with self.state.db.session() as s:
            repo = ExportRepo(s)
            rows = [r for r in repo.list(requester=requester)
                    if site is None or site in (r.sites or [])]
            return [_view(repo, r) for r in rows]

    def study_of(self, study_id: str) -> Study:
        with self.state.db.session() as s:
            study = StudyRepo(s).get(study_id)
            if study is None:
                raise NotFound(f"no study {study_id!r}")
            return study

    # -- the steps --------------------------------------------------------------------
    def request(self, study_id: str, artifact: str, requester: str,
                reason: str) -> dict[str, Any]:
        """Open an export request for one of the study's files and run its checks."""
        reason = _reason(reason, "the reason for the export (--why)")
        study = self.study_of(study_id)
        path = self._file(study_id, artifact)
        data = _read(path)
        digest = sha256(data)
        with self.state.db.session() as s:
            listed = SiteRepo(s).list()
        min_cell = strictest_min_cell(_site_thresholds(study, listed))
        dp = str((study.config or {}).get("privacy", {}).get("mode", "none")) != "none"
        source = None
        if artifact.endswith(".html"):
            source_path = path.parent / REPORT_SOURCE
            if source_path.is_file():
                source = (REPORT_SOURCE, _read(source_path))
        check = run_checks(artifact, data, min_cell=min_cell, dp=dp, source=source)
        sites = list(study.sites or [])
        quorum = quorum_of((study.config or {}).get("airlock", {}).get("quorum"), sites)
        state = opened(check, sites, quorum)
        with self.state.db.session() as s:
            repo = ExportRepo(s)
            row = repo.create(study_id=study_id, artifact=artifact, requester=requester,
                              reason=reason, digest=digest, size=len(data),
                              checks=check.to_dict(), state=state)
            view = _view(repo, row)
        audit = self.state.audit
        audit.export_requested(view["id"], study_id, artifact, requester, digest, len(data))
        audit.export_checked(view["id"], digest, state.status.value, min_cell,
                             len(check.refusals), check.flags)
        outcome = ("refused by the automatic checks: " + "; ".join(check.refusals)
                   if check.refused else
                   f"awaiting {quorum} of {len(sites)} site steward approval(s)")
        self.state.event("export", f"{requester} requested export {view['id']} of {artifact} "
                         f"(sha256 {digest[:16]}...): {outcome}", study_id=study_id)
        return view

    def decide(self, export_id: str, *, site: str, user: str, approve: bool,
               reason: str) -> dict[str, Any]:
        """Record the decision of ``site``'s steward ``user``."""
        reason = _reason(reason, "the reason for the decision (--why)", required=not approve)
        with self.state.db.session() as s:
            repo = ExportRepo(s)
            row = repo.get(export_id, lock=True)
            if row is None:
                raise NotFound(f"no export request {export_id!r}")
            before = repo.state(row)
            after = decide(before, Decision(site, user, approve, reason, utcnow()))
            repo.record_decision(row, after.decisions[-1], after.status)
            view = _view(repo, row)
        audit = self.state.audit
        audit.export_decided(export_id, view["digest"], site, user, approve, reason)
        verb = "approved" if approve else "rejected"
        self.state.event("export", f"steward {user} of {site} {verb} export {export_id}"
                         + (f": {reason}" if reason else ""), study_id=view["study_id"],
                         site=site)
        if after.status is not before.status:
            deciders = [d.site for d in after.decisions if d.approve == approve]
            audit.export_outcome(export_id, view["digest"], approve, deciders)
            self.state.event("export", f"export {export_id} {after.status.value}",
                             study_id=view["study_id"])
        return view

    def download(self, export_id: str, user: str) -> Released:
        """The approved bytes, for the requester only."""
        with self.state.db.session() as s:
            repo = ExportRepo(s)
            row = repo.get(export_id)
            if row is None:
                raise NotFound(f"no export request {export_id!r}")
            if row.requester != user:
                raise ExportForbidden(f"only the requester ({row.requester}) may download "
                                      f"export {export_id}")
            downloadable(repo.state(row))
            study_id, artifact, digest = row.study_id, row.artifact, row.digest
        data = _read(self._file(study_id, artifact))
        if sha256(data) != digest:
            self.state.event("export", f"export {export_id} refused: {artifact} changed on "
                             "the hub since it was requested (its SHA-256 differs from the "
                             "approved one)", study_id=study_id)
            raise ExportConflict(f"{artifact} changed on the hub since export {export_id} was "
                                 "requested; its SHA-256 is not the one the stewards "
                                 "approved, so it is not served; request it again")
        with self.state.db.session() as s:
            repo = ExportRepo(s)
            row = repo.get(export_id, lock=True)
            assert row is not None
            downloadable(repo.state(row))
            repo.set_status(row, ExportStatus.DOWNLOADED)
        self.state.audit.export_downloaded(export_id, digest, user)
        self.state.event("export", f"{user} downloaded export {export_id} ({artifact}, "
                         f"sha256 {digest[:16]}...)", study_id=study_id)
        return Released(artifact, data, digest)

    def _file(self, study_id: str, artifact: str) -> Path:
        if not ARTIFACT_NAME.fullmatch(artifact):
            raise ValidationError(f"{artifact!r} is not a file name of a study (letters, "
                                  "digits, '_', '.', '-')")
        artifact_kind(artifact)  # an unknown kind of file is refused before it is read
        path = self.state.data_dir / "studies" / study_id / artifact
        if path.is_symlink() or not path.is_file():
            raise NotFound(f"study {study_id} has no {artifact} (is it finished? its files: "
                           "history.json, model.safetensors, report.html, registry.json, "
                           "model.xgb.json for xgboost)")
        return path


def _reason(text: str, what: str, *, required: bool = True) -> str:
    text = text.strip()
    if required and not text:
        raise ValidationError(f"give {what}: the stewards and the audit trail need it")
    if len(text) > MAX_REASON:
        raise ValidationError(f"{what} is longer than {MAX_REASON} characters")
    return text


def _read(path: Path) -> bytes:
    if path.stat().st_size > MAX_CHECKED_BYTES:
        raise AirlockError(f"{path.name} is larger than the airlock handles "
                           f"({MAX_CHECKED_BYTES} B)")
    return path.read_bytes()


def _site_thresholds(study: Study, listed: Iterable[Site]) -> list[object]:
    """The small-cell thresholds (``min_cell`` of their quality reports) the study's sites
    sent for its dataset."""
    dataset = (study.config or {}).get("data", {}).get("dataset")
    sites = set(study.sites or [])
    return [d["quality"].get("min_cell", DEFAULT_MIN_CELL)
            for site in listed if site.name in sites for d in site.datasets or []
            if d.get("name") == dataset and isinstance(d.get("quality"), dict)]


def _view(repo: ExportRepo, row: ExportRequest) -> dict[str, Any]:
    state = repo.state(row)
    check = CheckResult.from_dict(row.checks)
    return {"id": row.id, "study_id": row.study_id, "artifact": row.artifact,
            "requester": row.requester, "reason": row.reason,
            "created": timestamp(row.created_at), "digest": row.digest, "bytes": row.size,
            "kind": check.kind.value, "min_cell": check.min_cell,
            "refusals": list(check.refusals), "flags": list(check.flags),
            "status": state.status.value, "sites": list(state.sites),
            "quorum": state.quorum, "approvals": state.approvals(),
            "decisions": [{"site": d.site, "user": d.user, "approve": d.approve,
                           "reason": d.reason, "at": timestamp(d.at)}
                          for d in state.decisions],
            "missing": state.missing() or None}
