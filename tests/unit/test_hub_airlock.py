"""The hub's airlock desk (fedcare.hub.airlock) on a real SQLite database, real files and the
hub's signed audit trail: what the checks refuse never becomes downloadable, the quorum
releases exactly the requested bytes to the requester only, and the database itself keeps a
refused request and every decision final (migration 0009's triggers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from fedcare.core.errors import ValidationError
from fedcare.governance.airlock import ExportConflict, ExportForbidden
from fedcare.governance.audit_log import EventKind, read, verify
from fedcare.hub.airlock import ExportDesk, sha256
from fedcare.hub.audit import hub_log_and_keys
from fedcare.hub.errors import NotFound
from fedcare.hub.service import HubService, NeverRevoked
from fedcare.hub.store import SiteRepo, StudyRepo
from fedcare.hub.store.models import ExportDecision, ExportRequest
from fedcare.hub.store.sites import DatasetInfo

SITES = ["alpha", "beta", "gamma"]


@pytest.fixture
def hub(tmp_path: Path):
    service = HubService(tmp_path / "hub", revocation=NeverRevoked())
    yield service
    service.state.audit.flush()
    service.db.dispose()


def make_study(hub: HubService, *, privacy: str = "none", quorum: int | None = None,
               min_cells: dict[str, int] | None = None) -> str:
    config = {"data": {"source": "federation", "dataset": "cohort"},
              "privacy": {"mode": privacy}}
    if quorum is not None:
        config["airlock"] = {"quorum": quorum}
    with hub.db.session() as s:
        for site in SITES:
            quality = {"min_cell": (min_cells or {}).get(site, 10)}
            SiteRepo(s).upsert_seen(site, "0a", "1", [DatasetInfo("cohort", 100,
                                                                  quality=quality)])
        study_id = StudyRepo(s).create("s", config, "f" * 64, SITES, 1).id
    out = hub.data_dir / "studies" / study_id
    out.mkdir(parents=True)
    (out / "model.safetensors").write_bytes(b"model bytes")
    (out / "counts.csv").write_text("group,n\nA,40\nB,12\n")
    (out / "small.csv").write_text("group,n\nA,40\nB,3\n")
    return study_id


def decide_all(desk: ExportDesk, export_id: str, sites: list[str] = SITES) -> dict:
    view = {}
    for site in sites:
        view = desk.decide(export_id, site=site, user=f"steward-{site}", approve=True,
                           reason="aggregate only")
    return view


def test_a_small_cell_table_is_refused_and_never_downloadable(hub: HubService) -> None:
    desk = ExportDesk(hub.state)
    study = make_study(hub)
    view = desk.request(study, "small.csv", "rita", "paper table 2")
    assert view["status"] == "refused_by_checks" and "row 3, 'n'" in view["refusals"][0]
    with pytest.raises(ExportConflict, match="decisions are final"):
        desk.decide(view["id"], site="alpha", user="s", approve=True, reason="")
    with pytest.raises(ExportConflict, match="automatic checks refused"):
        desk.download(view["id"], "rita")
    with pytest.raises(sa.exc.DBAPIError, match="final"), hub.db.session() as s:
        s.execute(sa.update(ExportRequest).values(status="approved"))
    assert desk.get(view["id"])["status"] == "refused_by_checks"


def test_the_strictest_site_threshold_applies(hub: HubService) -> None:
    study = make_study(hub, min_cells={"beta": 20})
    view = ExportDesk(hub.state).request(study, "counts.csv", "rita", "table 1")
    assert view["min_cell"] == 20 and view["status"] == "refused_by_checks"


def test_quorum_releases_exactly_the_requested_bytes_to_the_requester(
        hub: HubService) -> None:
    desk = ExportDesk(hub.state)
    study = make_study(hub)
    view = desk.request(study, "model.safetensors", "rita", "publish the model")
    assert view["status"] == "awaiting_stewards" and view["quorum"] == 3
    assert "without differential privacy" in view["flags"][0]
    assert view["digest"] == sha256(b"model bytes")
    view = decide_all(desk, view["id"], SITES[:2])
    with pytest.raises(ExportConflict, match="2 of 3 steward approvals"):
        desk.download(view["id"], "rita")
    view = decide_all(desk, view["id"], SITES[2:])
    assert view["status"] == "approved" and view["approvals"] == 3
    with pytest.raises(ExportForbidden, match="only the requester"):
        desk.download(view["id"], "mallory")
    released = desk.download(view["id"], "rita")
    assert released.data == b"model bytes" and desk.get(view["id"])["status"] == "downloaded"


def test_a_file_changed_after_approval_is_not_served(hub: HubService) -> None:
    desk = ExportDesk(hub.state)
    study = make_study(hub, quorum=1)
    view = desk.request(study, "model.safetensors", "rita", "publish")
    desk.decide(view["id"], site="beta", user="b", approve=True, reason="")
    (hub.data_dir / "studies" / study / "model.safetensors").write_bytes(b"other bytes")
    with pytest.raises(ExportConflict, match="changed on the hub"):
        desk.download(view["id"], "rita")


def test_a_rejection_is_final_and_decisions_are_immutable(hub: HubService) -> None:
    desk = ExportDesk(hub.state)
    study = make_study(hub, privacy="dp_sgd", quorum=1)
    view = desk.request(study, "counts.csv", "rita", "table 1")
    assert view["flags"] == []
    with pytest.raises(ValidationError, match="reason"):
        desk.decide(view["id"], site="alpha", user="a", approve=False, reason="  ")
    view = desk.decide(view["id"], site="alpha", user="a", approve=False, reason="too fine")
    assert view["status"] == "rejected"
    with pytest.raises(ExportConflict):
        desk.decide(view["id"], site="beta", user="b", approve=True, reason="")
    with pytest.raises(ExportConflict, match="rejected by the steward"):
        desk.download(view["id"], "rita")
    for stmt in (sa.update(ExportDecision).values(approve=True), sa.delete(ExportDecision)):
        with pytest.raises(sa.exc.DBAPIError, match="immutable"), hub.db.session() as s:
            s.execute(stmt)


def test_bad_requests_name_the_problem(hub: HubService) -> None:
    desk = ExportDesk(hub.state)
    study = make_study(hub)
    with pytest.raises(ValidationError, match="file name"):
        desk.request(study, "../hub.db", "rita", "x")
    with pytest.raises(NotFound, match=r"has no history\.json"):
        desk.request(study, "history.json", "rita", "x")
    with pytest.raises(ValidationError, match="reason"):
        desk.request(study, "counts.csv", "rita", "")
    with pytest.raises(NotFound, match="no study"):
        desk.request("nosuch", "counts.csv", "rita", "x")
    with pytest.raises(ExportForbidden, match="does not take part"):
        view = desk.request(study, "counts.csv", "rita", "x")
        desk.decide(view["id"], site="zeta", user="z", approve=True, reason="")


def test_every_step_is_in_the_signed_audit_trail_with_the_digest(hub: HubService) -> None:
    desk = ExportDesk(hub.state)
    study = make_study(hub, quorum=2)
    view = desk.request(study, "counts.csv", "rita", "table 1")
    decide_all(desk, view["id"], SITES[:2])
    desk.download(view["id"], "rita")
    refused = desk.request(study, "small.csv", "rita", "table 2")
    hub.state.audit.flush()
    path, keys = hub_log_and_keys(hub.data_dir)
    assert verify(path, keys).ok
    entries = [e for e in read(path) if e.kind.value.startswith("export_")]
    assert [(e.kind, e.subject) for e in entries] == [
        (EventKind.EXPORT_REQUESTED, view["id"]), (EventKind.EXPORT_CHECKED, view["id"]),
        (EventKind.EXPORT_DECIDED, view["id"]), (EventKind.EXPORT_DECIDED, view["id"]),
        (EventKind.EXPORT_APPROVED, view["id"]), (EventKind.EXPORT_DOWNLOADED, view["id"]),
        (EventKind.EXPORT_REQUESTED, refused["id"]), (EventKind.EXPORT_CHECKED, refused["id"])]
    digest = sha256((hub.data_dir / "studies" / study / "counts.csv").read_bytes())
    assert all(e.details["digest"] == digest for e in entries[:6])
    assert entries[-1].details["status"] == "refused_by_checks"
    text = path.read_text()
    assert "A,40" not in text and "B,3" not in text  # never the content


def test_lists_are_filtered_by_requester_and_site(hub: HubService) -> None:
    desk = ExportDesk(hub.state)
    study = make_study(hub)
    mine = desk.request(study, "counts.csv", "rita", "t")
    desk.request(study, "model.safetensors", "sam", "m")
    assert [v["id"] for v in desk.list(requester="rita")] == [mine["id"]]
    assert len(desk.list(site="alpha")) == 2 and desk.list(site="zeta") == []
    assert json.dumps(desk.list())  # JSON-able views


def test_the_quorum_option_hashes_as_before_at_its_default_and_is_bounded() -> None:
    from fedcare.config import MAX_QUORUM, content_hash, parse_config
    from fedcare.core.errors import ConfigError

    raw = {"data": {"source": "synthetic"}}
    plain = content_hash(parse_config(raw))
    assert content_hash(parse_config({**raw, "airlock": {}})) == plain
    assert content_hash(parse_config({**raw, "airlock": {"quorum": 2}})) != plain
    for bad in (0, MAX_QUORUM + 1):
        with pytest.raises(ConfigError, match=r"airlock\.quorum"):
            parse_config({**raw, "airlock": {"quorum": bad}})


class ExportStoreContract:
    """What the database itself keeps final (migration 0009's triggers), on every backend."""

    @pytest.fixture
    def db_url(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    def db(self, db_url: str):
        from fedcare.hub.store import Database

        database = Database(db_url)
        database.migrate()
        yield database
        database.dispose()

    @staticmethod
    def _request(db, status: str) -> str:
        from fedcare.governance.airlock import ExportState, ExportStatus
        from fedcare.hub.store.exports import ExportRepo

        with db.session() as s:
            study = StudyRepo(s).create("s", {}, "f" * 64, ["a", "b"], 1).id
            row = ExportRepo(s).create(
                study_id=study, artifact="t.csv", requester="rita", reason="r",
                digest="0" * 64, size=1, checks={"kind": "table", "min_cell": 10},
                state=ExportState(ExportStatus(status), ("a", "b"), 2))
            return row.id

    @pytest.mark.parametrize("status", ["refused_by_checks", "rejected"])
    def test_a_final_request_is_never_updated_nor_deleted(self, db, status: str) -> None:
        export_id = self._request(db, status)
        for stmt in (sa.update(ExportRequest).values(status="approved"),
                     sa.delete(ExportRequest)):
            with pytest.raises(sa.exc.DBAPIError, match="final"), db.session() as s:
                s.execute(stmt)
        with db.session() as s:
            assert s.get(ExportRequest, export_id).status == status

    def test_a_waiting_request_moves_on_and_decisions_are_once_and_immutable(self, db) -> None:
        from fedcare.governance.airlock import Decision, ExportStatus
        from fedcare.hub.store.exports import ExportRepo
        from fedcare.hub.store.models import utcnow

        export_id = self._request(db, "awaiting_stewards")
        with db.session() as s:
            repo = ExportRepo(s)
            row = repo.get(export_id, lock=True)
            repo.record_decision(row, Decision("a", "u", True, "", utcnow()),
                                 ExportStatus.AWAITING)
        with pytest.raises(sa.exc.IntegrityError), db.session() as s:
            repo = ExportRepo(s)
            repo.record_decision(repo.get(export_id), Decision("a", "u", False, "no",
                                                               utcnow()),
                                 ExportStatus.REJECTED)
        for stmt in (sa.update(ExportDecision).values(approve=False), sa.delete(ExportDecision)):
            with pytest.raises(sa.exc.DBAPIError, match="immutable"), db.session() as s:
                s.execute(stmt)
        with db.session() as s:
            repo = ExportRepo(s)
            row = repo.get(export_id)
            assert row.status == "awaiting_stewards" and len(repo.decisions(export_id)) == 1
            repo.set_status(row, ExportStatus.APPROVED)
            repo.set_status(row, ExportStatus.DOWNLOADED)

    def test_migration_0009_downgrades_and_upgrades_cleanly(self, db_url: str) -> None:

        from fedcare.hub.store import upgrade
        from fedcare.hub.store.database import create_hub_engine, downgrade

        upgrade(db_url)
        engine = create_hub_engine(db_url)
        try:
            downgrade(engine, "0008")
            assert "export_requests" not in sa.inspect(engine).get_table_names()
        finally:
            engine.dispose()
        upgrade(db_url)
        from fedcare.hub.store import Database

        again = Database(db_url)
        try:
            self._request(again, "rejected")
            with pytest.raises(sa.exc.DBAPIError, match="final"), again.session() as s:
                s.execute(sa.delete(ExportRequest))
        finally:
            again.dispose()


class TestSqliteExports(ExportStoreContract):
    @pytest.fixture
    def db_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'exports.db'}"
