"""The hub's half of following a networked study (issue 14, item 13), in process: the study
list says when each study was created, a site is online while its node polls (and a minute
after), and a study's history carries "created" for the report's header."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedcare.hub import studies as hub_studies
from fedcare.hub.service import HubService, NeverRevoked


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubService]:
    svc = HubService(tmp_path / "hub", revocation=NeverRevoked())
    try:
        for site in ("a", "b"):
            svc.hello(site, "01", "9.9", [{"name": "breast", "rows": 140}], "s")
        yield svc
    finally:
        svc.stop()
        svc.db.dispose()


STUDY = {"study": {"name": "followed", "rounds": 3},
         "data": {"source": "federation", "dataset": "breast", "label": "y",
                  "features": ["f0", "f1"], "standardize": False}}


def test_the_study_list_and_status_say_when_a_study_was_created(hub: HubService) -> None:
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    doc = hub.submit_study(STUDY)

    listed = hub.list_studies()
    status = hub.study_status(doc["study_id"])
    engine, _ = hub.runner._engine(doc["study_id"], None)  # type: ignore[arg-type]

    assert [s["study_id"] for s in listed] == [doc["study_id"]]
    created = dt.datetime.fromisoformat(listed[0]["created"])
    assert before <= created <= dt.datetime.now(dt.UTC)
    assert status["created"] == listed[0]["created"] == engine.history.meta["created"]
    assert status["primary_metric"] == "accuracy"


def test_a_site_is_online_while_it_polls_and_for_a_minute_after(
        hub: HubService, monkeypatch: pytest.MonkeyPatch) -> None:
    asyncio.run(hub.next_task("a", 0.0))  # one (empty) long-poll
    sites = {s["name"]: s for s in hub.sites()}
    assert sites["a"]["online"] and sites["a"]["version"] == "9.9"
    assert sites["a"]["datasets"][0]["rows"] == 140

    # A minute without a poll (nor a hello): offline, last seen kept.
    monkeypatch.setattr(hub_studies, "ONLINE_WITHIN", -1.0)
    sites = {s["name"]: s for s in hub.sites()}
    assert not sites["a"]["online"] and not sites["b"]["online"]
    assert dt.datetime.fromisoformat(sites["a"]["last_seen"]) >= dt.datetime.fromisoformat(
        sites["b"]["last_seen"])
