"""The hub's response models (:mod:`fedcare.hub.schemas`) match what the service returns.

A response model that lacks a key the service writes drops it silently (FastAPI sends only
the declared fields), and a consumer reading it breaks far away. So every service answer of a
real study (a real :class:`HubService` and real node agents answering in threads, in process)
is checked to round-trip through its model unchanged, which is stricter than
``extra="forbid"``: no key dropped, none added by a default, no value coerced. The API is
then checked to send exactly the service's answers, and the researcher's
:class:`~fedcare.client.HubClient` to parse them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import TypeAdapter

from fedcare.client import HubClient, watch
from fedcare.config import content_hash, parse_config
from fedcare.core.errors import FedcareError
from fedcare.hub import runner as runner_module
from fedcare.hub import schemas
from fedcare.hub import service as service_module
from fedcare.hub.api import PeerTrust, create_app
from fedcare.hub.store import StudyRepo, StudyStatus
from tests.integration.network import study_config
from tests.tokens import TOKEN, install_token
from tests.unit.test_hub_study_pause import SITES, WAIT, Federation


def _same(model: Any, doc: Any) -> None:
    """``doc`` (a service answer) parses as ``model`` and dumps back to exactly itself
    (fields the service may leave out are optional in the model: not added back)."""
    adapter = TypeAdapter(model)
    wire = json.loads(json.dumps(doc))
    assert adapter.dump_python(adapter.validate_python(wire), mode="json",
                               exclude_unset=True) == wire


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Federation, str, Any]]:
    """A completed two-round study on a real hub service, its submit answer."""
    root = tmp_path_factory.mktemp("schemas")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner_module, "SETTLE_RETRY", (0.05, 0.2))
        fed = Federation(root)
        fed.root = root  # type: ignore[attr-defined]
        try:
            fed.start_nodes()
            submitted = fed.svc.submit_study(study_config(rounds=2))
            fed.svc.wait_for(submitted["study_id"], WAIT)
            assert fed.status(submitted["study_id"])["status"] == "completed"
            yield fed, submitted["study_id"], submitted
        finally:
            fed.close()


def _app(fed: Federation) -> Any:
    install_token(fed.svc)
    return create_app(fed.svc, PeerTrust(fed.root / "fed" / "hub"))


def test_every_service_answer_round_trips_through_its_model(
        study: tuple[Federation, str, Any]) -> None:
    fed, study_id, submitted = study
    svc = fed.svc

    _same(schemas.Submitted, submitted)
    status = svc.study_status(study_id)
    assert len(status["rounds"]) == 2 and status["rounds"][0]["site_metrics"]
    _same(schemas.StudyStatus, status)
    _same(schemas.StudyStatus, svc.study_status(study_id, 1))
    _same(list[schemas.StudySummary], svc.list_studies())
    events = svc.study_events(study_id)
    assert events
    _same(list[schemas.Event], events)
    sites = svc.sites()
    assert {s["name"] for s in sites} == set(SITES) and all(s["datasets"] for s in sites)
    _same(list[schemas.SiteInfo], sites)
    _same(schemas.NodeStudy, svc.study_for_node(SITES[0], study_id))


def test_dataset_quality_and_resume_answers_round_trip(tmp_path: Path) -> None:
    svc = service_module.HubService(tmp_path / "hub", revocation=service_module.NeverRevoked())
    try:
        report = {"cohort_rows": 120, "label": {"positive": 30, "negative": 90},
                  "passes": True}
        svc.hello("a", "01", "1", [{"name": "cardio", "rows": 120, "contract_hash": "a" * 64,
                                    "quality": report}], "s")
        svc.hello("b", "02", "1", [{"name": "cardio", "rows": 80, "quality": {
            **report, "violations": ["too few rows"]}}], "s")
        quality = svc.dataset_quality("cardio")
        assert quality["comparison"] is not None and quality["refusing"]
        _same(schemas.DatasetQuality, quality)
        _same(list[schemas.SiteInfo], svc.sites())

        cfg = parse_config({"study": {"name": "paused", "rounds": 2},
                            "data": {"source": "federation", "dataset": "cardio",
                                     "label": "y", "features": ["f0"],
                                     "standardize": False}})
        with svc.db.session() as s:  # a study the hub paused (its storage was full)
            repo = StudyRepo(s)
            study_id = repo.create("paused", cfg.model_dump(mode="json"), content_hash(cfg),
                                   ["a", "b"], 2).id
            repo.set_status(study_id, StudyStatus.RUNNING)
            repo.set_status(study_id, StudyStatus.PAUSED)
        _same(schemas.Resumed, svc.resume_study(study_id))
    finally:
        svc.stop()
        svc.db.dispose()


def test_the_api_sends_exactly_the_service_answers(study: tuple[Federation, str, Any]) -> None:
    fed, study_id, _ = study
    http = TestClient(_app(fed), headers={"Authorization": f"Bearer {TOKEN}"})

    def got(path: str) -> Any:
        r = http.get(path)
        assert r.status_code == 200, r.text
        return r.json()

    def want(doc: Any) -> Any:
        return json.loads(json.dumps(doc))

    assert got(f"/v1/studies/{study_id}") == want(fed.svc.study_status(study_id))
    assert got(f"/v1/studies/{study_id}?rounds=1") == want(fed.svc.study_status(study_id, 1))
    assert got("/v1/studies") == want(fed.svc.list_studies())
    assert got(f"/v1/studies/{study_id}/events") == want(fed.svc.study_events(study_id))
    sites = TypeAdapter(list[schemas.SiteInfo])
    moving = {"__all__": {"last_seen", "online"}}  # while the nodes poll
    assert sites.dump_python(sites.validate_python(got("/v1/sites")), exclude=moving) == \
        sites.dump_python(sites.validate_python(fed.svc.sites()), exclude=moving)
    refused = http.get("/v1/studies/nosuch")
    assert refused.status_code == 404
    assert schemas.ErrorBody.model_validate(refused.json()).error == "NotFound"


def test_the_researcher_client_returns_typed_answers(
        study: tuple[Federation, str, Any]) -> None:
    fed, study_id, _ = study
    client = object.__new__(HubClient)  # its HTTPS client, replaced by the in-process app
    client.http = TestClient(_app(fed), headers={"Authorization": f"Bearer {TOKEN}"})

    assert client.health().status == "ok"
    status = client.status(study_id)
    assert isinstance(status, schemas.StudyStatus)
    assert [r.round for r in status.rounds] == [1, 2]
    assert status.rounds[-1].metric(None, status.primary_metric) is not None
    assert [r.round for r in client.status(study_id, last_rounds=1).rounds] == [2]
    seen: list[schemas.StudyStatus] = []
    final = watch(client, study_id, on_status=seen.append, poll=0.0)
    assert final.status == "completed" and seen == [final]
    assert [s.study_id for s in client.studies()] == [study_id]
    assert {s.name for s in client.sites()} == set(SITES)
    assert client.events(study_id)[0].kind == "study"
    # A study's files are not served as such: they leave through the airlock.
    assert client.http.get(f"/v1/studies/{study_id}/artifacts/model.safetensors"
                           ).status_code == 404
    with pytest.raises(FedcareError, match=r"hub refused \(404\): no study 'nosuch'"):
        client.status("nosuch")
    with pytest.raises(FedcareError, match=r"hub refused \(409\)"):
        client.resume(study_id)
