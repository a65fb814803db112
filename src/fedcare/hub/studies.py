"""The researcher's desk: submitting a study (its participants, data-contract and quality
checks), and reading studies, their events, datasets' quality and the sites (a study's files
leave only through the airlock, :mod:`fedcare.hub.airlock`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from fedcare.config import (
    FederatedData,
    StudyConfig,
    content_hash,
    contract_matches,
    parse_config,
    portable_config,
    secure_round_problems,
)
from fedcare.core.errors import ConfigError
from fedcare.engine.dp_check import check_dp_study
from fedcare.engine.history import timestamp
from fedcare.hub.approvals import ApprovalDesk, decision_rows
from fedcare.hub.errors import NotFound
from fedcare.hub.mailbox import TaskMailbox
from fedcare.hub.sites import SiteDirectory
from fedcare.hub.state import HubState
from fedcare.hub.store import (
    Database,
    DecisionRepo,
    EventRepo,
    Site,
    SiteRepo,
    Study,
    StudyRepo,
    StudyStatus,
)
from fedcare.learners.metrics import primary_metric_meta

#: A site is online (``fedcare sites``) while its node long-polls, or polled this recently
#: (seconds): a running node polls again as soon as a poll ends.
ONLINE_WITHIN = 60.0


class StudyDesk:
    """Researcher-facing reads and the study submission. ``approvals``: where a submitted
    study waits for its sites' approval (it starts once they all approved)."""

    def __init__(self, state: HubState, mailbox: TaskMailbox, directory: SiteDirectory, *,
                 approvals: ApprovalDesk) -> None:
        self.state = state
        self.mailbox = mailbox
        self.is_revoked = directory.is_revoked
        self.approvals = approvals

    @property
    def db(self) -> Database:
        return self.state.db

    @property
    def data_dir(self) -> Path:
        return self.state.data_dir

    def event(self, kind: str, message: str, *, study_id: str | None = None,
              site: str | None = None) -> None:
        self.state.event(kind, message, study_id=study_id, site=site)

    def submit_study(self, raw: Mapping[str, Any], force: bool = False, *,
                     owner: str | None = None) -> dict[str, Any]:
        """Check and start a study; ``owner``: the user submitting it (who may read it)."""
        cfg = parse_config(raw)
        if not isinstance(cfg.data, FederatedData):
            raise ConfigError("a networked study needs data.source = 'federation' (the nodes "
                              "map data.dataset to their own files)")
        with self.db.session() as s:
            listed = SiteRepo(s).list()  # read once for the three checks below
        sites = self._participants(cfg, listed)
        check_dp_study(cfg, len(sites), force=force)  # a DP study that cannot learn: 422
        self._check_contracts(cfg, sites, listed)
        if len(sites) < cfg.strategy.min_sites:
            raise ConfigError(f"only {len(sites)} site(s) hold dataset {cfg.data.dataset!r} "
                              f"({sites}); the strategy needs {cfg.strategy.min_sites}")
        problems = secure_round_problems(cfg, len(sites))
        if problems:
            raise ConfigError(problems)
        with self.db.session() as s:
            study = StudyRepo(s).create(cfg.study.name, portable_config(cfg),
                                        content_hash(cfg), sites, cfg.study.rounds,
                                        owner=owner)
            study_id = study.id
            StudyRepo(s).set_status(study_id, StudyStatus.PENDING_APPROVAL)
        self.event("study", f"study {cfg.study.name!r} submitted with sites {sites}; it "
                   "waits for every site's approval of its content hash", study_id=study_id)
        self.state.audit.study_submitted(study_id, cfg.study.name, content_hash(cfg), sites)
        self._flag_data(cfg.data.dataset, study_id, listed)
        self.approvals.evaluate(study_id)  # a one-site study's site may have decided already
        return {"study_id": study_id, "config_hash": content_hash(cfg), "sites": sites,
                "status": StudyStatus.PENDING_APPROVAL.value}

    def _check_contracts(self, cfg: StudyConfig, sites: list[str],
                         listed: list[Site]) -> None:
        """Refuse a study whose sites built its dataset with different data contracts (or
        another contract than the study names): they would not be training on the same
        problem. Sites without a contract (plain tables) are not affected."""
        assert isinstance(cfg.data, FederatedData)
        hashes: dict[str, str] = {
            site.name: str(d["contract_hash"]) for site in listed
            if site.name in sites for d in site.datasets or []
            if d.get("name") == cfg.data.dataset and d.get("contract_hash")}
        wanted = cfg.data.contract_hash
        if wanted is not None:
            wrong = sorted(n for n, h in hashes.items() if not contract_matches(wanted, h))
            named = sorted({h for h in hashes.values() if contract_matches(wanted, h)})
            if len(named) > 1:
                raise ConfigError(f"data.contract_hash {wanted!r} is a prefix of {len(named)} "
                                  f"different data contracts among the sites ("
                                  f"{', '.join(h[:16] + '...' for h in named)}); give the "
                                  "full 64-digit hash `fedcare data check` prints")
            if wrong:
                raise ConfigError(f"sites {wrong} built dataset {cfg.data.dataset!r} with "
                                  "another data contract than data.contract_hash; they must "
                                  "re-check their data against the study's contract")
        elif len(set(hashes.values())) > 1:
            raise ConfigError(f"the sites built dataset {cfg.data.dataset!r} with different "
                              "data contracts; name one with data.contract_hash")

    def _flag_data(self, dataset: str, study_id: str, listed: list[Site]) -> None:
        """Before training starts: log what the sites' quality reports say about the data
        (shift, likely label-definition mismatch, refusals) in the study's event log."""
        try:
            q = self.dataset_quality(dataset, listed)
        except NotFound:
            return
        for site, why in q["refusing"].items():
            self.event("data", f"site {site} will refuse to train on {dataset!r}: {why}",
                       study_id=study_id, site=site)
        for f in (q["comparison"] or {}).get("findings", []):
            self.event("data", f"{f['kind']}: {f['message']}", study_id=study_id,
                       site=f.get("site"))

    def _participants(self, cfg: StudyConfig, listed: list[Site]) -> list[str]:
        assert isinstance(cfg.data, FederatedData)
        revoked = {site.name for site in listed if self.is_revoked(site.cert_serial)}
        known = {site.name: [d["name"] for d in site.datasets or []]
                 for site in listed if site.name not in revoked}
        if cfg.data.sites:
            gone = sorted(revoked & set(cfg.data.sites))
            if gone:
                raise ConfigError(f"sites {gone} have been revoked (their certificates are on "
                                  "the federation's revocation list); remove them from "
                                  "data.sites")
            missing = [x for x in cfg.data.sites if cfg.data.dataset not in known.get(x, [])]
            if missing:
                raise ConfigError(f"sites {missing} are unknown to the hub or do not hold "
                                  f"dataset {cfg.data.dataset!r}; start their nodes first")
            return list(cfg.data.sites)
        return sorted(n for n, ds in known.items() if cfg.data.dataset in ds)

    def study_status(self, study_id: str, last_rounds: int | None = None) -> dict[str, Any]:
        """The study's state and its rounds' records (``last_rounds``: only the last that
        many; a progress display needs one, and all of them grow with the study)."""
        with self.db.session() as s:
            study = StudyRepo(s).get(study_id)
            if study is None:
                raise NotFound(f"no study {study_id!r}")
            rounds = [r.record for r in StudyRepo(s).rounds(study_id, last_rounds) if r.record]
            raw = study.config or {}
            primary = primary_metric_meta(str(raw.get("data", {}).get("task", "binary")),
                                          raw.get("study", {}).get("primary_metric"))
            return {"study_id": study.id, "name": study.name, "status": study.status.value,
                    "created": timestamp(study.created_at), **primary,
                    "rounds_planned": study.rounds_planned, "current_round": study.current_round,
                    "sites": study.sites, "config_hash": study.config_hash,
                    "error": study.error, "rounds": rounds, "owner": study.owner,
                    "approvals": decision_rows(DecisionRepo(s).for_study(study_id))}

    def list_studies(self) -> list[dict[str, Any]]:
        with self.db.session() as s:
            return [{"study_id": st.id, "name": st.name, "status": st.status.value,
                     "current_round": st.current_round, "rounds_planned": st.rounds_planned,
                     "created": timestamp(st.created_at), "owner": st.owner,
                     "sites": list(st.sites or [])}
                    for st in StudyRepo(s).list()]

    def parties(self, study_id: str | None = None) -> dict[str, tuple[str | None, list[str]]]:
        """Every study's (or one study's) owner and sites, by id: what
        :mod:`fedcare.hub.access` decides by (two columns, not the whole rows)."""
        query = sa.select(Study.id, Study.owner, Study.sites)
        if study_id is not None:
            query = query.where(Study.id == study_id)
        with self.db.session() as s:
            return {row.id: (row.owner, list(row.sites or [])) for row in s.execute(query)}

    def study_events(self, study_id: str, limit: int = 200) -> list[dict[str, Any]]:
        with self.db.session() as s:
            return [{"at": e.at.isoformat(), "kind": e.kind, "site": e.site,
                     "message": e.message}
                    for e in reversed(EventRepo(s).recent(limit, study_id=study_id))]

    def dataset_quality(self, name: str, listed: list[Site] | None = None) -> dict[str, Any]:
        """Every site's quality report for dataset ``name`` and the hub's comparison of them
        (distribution shift, label-rate outliers, code coverage, units, contract mismatch):
        checked before anyone trains on the data. ``listed``: the site table, when the
        caller has just read it."""
        if listed is None:
            with self.db.session() as s:
                listed = SiteRepo(s).list()
        reports = {site.name: d["quality"] for site in listed for d in site.datasets or []
                   if d.get("name") == name and isinstance(d.get("quality"), dict)}
        if not reports:
            raise NotFound(f"no site reported a quality check for dataset {name!r} (clinical "
                           "datasets with a contract report one when their node starts)")
        usable = {k: v for k, v in reports.items() if "error" not in v}
        comparison = None
        if len(usable) >= 2:
            from fedcare.analytics.shift import compare_reports

            try:
                comparison = compare_reports(usable).to_dict()
            except Exception as exc:  # noqa: BLE001 (reports are node-supplied JSON: a malformed one must not make this endpoint, or a study submission, fail)
                comparison = {"error": f"the sites' reports could not be compared: {exc!r}",
                              "findings": []}
        return {"dataset": name, "reports": reports, "comparison": comparison,
                "refusing": {k: v.get("violations") or v.get("error")
                             for k, v in reports.items()
                             if v.get("violations") or v.get("error")}}

    def sites(self) -> list[dict[str, Any]]:
        """The sites the hub knows, each ``online`` when its node polled within
        :data:`ONLINE_WITHIN` seconds (a node long-polls continuously while it runs)."""
        now = dt.datetime.now(dt.UTC)
        polling, polled = self.mailbox.poll_activity()
        out = []
        with self.db.session() as s:
            for x in SiteRepo(s).list():
                seen = now if x.name in polling else max(x.last_seen,
                                                         polled.get(x.name, x.last_seen))
                out.append({"name": x.name, "last_seen": timestamp(seen),
                            "online": (now - seen).total_seconds() <= ONLINE_WITHIN,
                            "version": x.version, "datasets": x.datasets})
        return out

    def study_for_node(self, site: str, study_id: str) -> dict[str, Any]:
        with self.db.session() as s:
            study = StudyRepo(s).get(study_id)
            if study is None or site not in (study.sites or []):
                raise NotFound(f"no study {study_id!r} for site {site}")
            return {"study_id": study.id, "config": study.config,
                    "config_hash": study.config_hash, "sites": study.sites}
