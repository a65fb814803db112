"""A real hub study (in-process hub service and node agents, see test_hub_study_pause.py)
releases its model into the registry: registry.json beside its outputs, a row in the
registry table, read through GET /v1/models[/{id}[/card]]; no route writes an entry."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedcare.client import HubClient
from fedcare.core.errors import FedcareError
from fedcare.engine.registry import RegistryEntry, read_entry
from fedcare.hub import runner as runner_module
from tests.integration.network import study_config
from tests.unit.test_hub_study_pause import Federation


@pytest.fixture
def fed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Federation]:
    monkeypatch.setattr(runner_module, "SETTLE_RETRY", (0.05, 0.2))
    federation = Federation(tmp_path)
    try:
        yield federation
    finally:
        federation.close()


def test_a_hub_study_is_released_into_the_registry(fed: Federation, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from fedcare.hub.api import PeerTrust, create_app
    from tests.tokens import user_token

    app = create_app(fed.svc, PeerTrust(tmp_path / "fed" / "hub"))
    client = TestClient(app, headers={"Authorization": f"Bearer {user_token(fed.svc)}"})
    fed.start_nodes()
    study_id = client.post("/v1/studies", json=study_config(rounds=2)).json()["study_id"]
    assert fed.settled(study_id)["status"] == "completed"

    on_disk = read_entry(fed.svc.data_dir / "studies" / study_id)
    assert on_disk.study_id == study_id and on_disk.mode == "network" and on_disk.rounds == 2
    assert [s.name for s in on_disk.sites] == ["alpha", "beta"]
    assert all(s.train_rows for s in on_disk.sites)
    # Lineage: each site's dataset digest, from its hello (SHA-256 of the file it read).
    digests = [s.dataset_digest for s in on_disk.sites]
    assert all(len(d or "") == 64 for d in digests) and len(set(digests)) == 2
    listed = client.get("/v1/models").json()
    assert [m["id"] for m in listed] == [on_disk.id] and listed[0]["study_id"] == study_id
    got = RegistryEntry.model_validate_json(client.get(f"/v1/models/{on_disk.id}").content)
    assert got == on_disk
    md = client.get(f"/v1/models/{on_disk.id}/card")
    assert md.headers["content-type"].startswith("text/markdown") and "| alpha |" in md.text
    page = client.get(f"/v1/models/{on_disk.id}/card", headers={"Accept": "text/html"})
    assert page.headers["content-type"].startswith("text/html") and "<h2>Privacy" in page.text
    assert client.get("/v1/models/nosuch").status_code == 404
    researcher = object.__new__(HubClient)  # the researcher's client over the same app
    researcher.http = client
    assert [m.id for m in researcher.models(study_id)] == [on_disk.id]
    assert researcher.models("another-study") == []
    assert researcher.model_entry(on_disk.id) == on_disk
    assert "## Lineage" in researcher.model_card(on_disk.id)
    assert researcher.model_card(on_disk.id, "html").startswith("<!doctype html>")
    with pytest.raises(FedcareError, match="404"):
        researcher.model_entry("nosuch")
    assert client.get("/v1/models", headers={"Authorization": "Bearer x"}).status_code == 401
    # No route changes or removes an entry.
    for method in ("PUT", "PATCH", "DELETE", "POST"):
        assert client.request(method, f"/v1/models/{on_disk.id}",
                              json=json.loads(on_disk.to_json())).status_code == 405
    write_routes = [r for r in app.routes if "/v1/models" in getattr(r, "path", "")
                    and set(getattr(r, "methods", ())) - {"GET", "HEAD"}]
    assert write_routes == []

    # A second release of the same study is a new entry; the first stays as it was.
    from fedcare.engine.history import History

    doc = json.loads((fed.svc.data_dir / "studies" / study_id / "history.json").read_text())
    fed.svc.runner._release(study_id, fed.svc.data_dir / "studies" / study_id,
                            History.from_dict(doc))
    ids = [m["id"] for m in client.get("/v1/models").json()]
    assert len(ids) == 2 and ids[0] == on_disk.id
    assert RegistryEntry.model_validate_json(
        client.get(f"/v1/models/{on_disk.id}").content) == on_disk
