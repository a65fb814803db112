"""A study whose hub cannot write its storage is paused, not failed, and resumes from its last
completed round (audit finding F14: a full disk failed the study for good, and a study whose
thread died while recording its failure stayed ``running`` with no runner).

The hub is a real :class:`HubService` (SQLite, blob store) and the sites real
:class:`NodeAgent` s answering its tasks in threads, in this process: no TLS, no HTTP. The
storage failure is injected where it happens on a full disk, as the OSError(28) a blob write
raises and the ``database or disk is full`` error a database write raises;
``tests/integration/test_hub_disk_full.py`` fills a real (tmpfs) file system, as does the
last test here (skipped without the right to mount).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from fedcare.core.errors import FedcareError
from fedcare.governance.approvals import Decision
from fedcare.hub import runner as runner_module
from fedcare.hub.provisioning import create_federation
from fedcare.hub.service import HubService, NeverRevoked, NotFound, NotResumable, StorageUnavailable
from fedcare.hub.store import BlobStore, StudyRepo, StudyStatus
from fedcare.node.agent import NodeAgent
from fedcare.node.hub_link import HubResponse
from tests.integration.network import DATASET, study_config, write_site_tables
from tests.unit.helpers import with_permissive_policy

SITES = ("alpha", "beta")
WAIT = 120.0  # bound of every wait (a loaded 2-core box); nothing is timed


class FillingDisk(BlobStore):
    """A blob store on a disk that fills up: from the ``full_from``-th write on, every
    write fails as it does on a full file system, until :attr:`full` is cleared."""

    def __init__(self, root: Path, full_from: int) -> None:
        super().__init__(root)
        self.writes, self.full_from, self.full = 0, full_from, False
        self.on_full: Callable[[], None] = lambda: None

    def put(self, data: bytes) -> str:
        self.writes += 1
        if self.writes == self.full_from:
            self.full = True
            self.on_full()
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.root))
        return super().put(data)


class _Link:
    """The one request a node makes besides polling and replying: the study's config."""

    def __init__(self, svc: HubService, site: str) -> None:
        self.svc, self.site = svc, site

    def request(self, method: str, path: str, **kw: Any) -> HubResponse:
        if path == "/v1/node/pending":  # the approval sync's two requests
            return HubResponse(200, {}, json.dumps(self.svc.pending_for(self.site)).encode())
        if path == "/v1/node/decisions":
            body = kw["json"]
            self.svc.site_decided(self.site, body["study_id"], Decision(body["decision"]),
                                  body["content_hash"], body["reason"])
            return HubResponse(200, {}, b"{}")
        study_id = path.rsplit("/", 1)[-1]
        doc = self.svc.study_for_node(self.site, study_id)
        return HubResponse(200, {}, json.dumps(doc).encode())

    def close(self) -> None:
        pass


class Federation:
    """A hub service and its sites' node agents, polling it in threads."""

    def __init__(self, root: Path) -> None:
        create_federation(root / "fed", hub_host="127.0.0.1", hub_port=1, sites=list(SITES),
                          site_kits=root / "kits")
        tables = write_site_tables(root / "data", SITES)
        self.svc = HubService(root / "hub", revocation=NeverRevoked())
        self.stop = threading.Event()
        self.agents: dict[str, NodeAgent] = {}
        self.threads: list[threading.Thread] = []
        for site in SITES:
            conf = root / "data" / f"{site}.toml"
            conf.write_text(f'[datasets.{DATASET}]\npath = "{tables[DATASET][site].name}"\n'
                            '[approval]\nstudies = "any"\n')
            with_permissive_policy(conf, f"{site}-policy.toml")
            agent = NodeAgent(root / "kits" / site, conf,
                              state_dir=root / "state" / site)
            agent.http = _Link(self.svc, site)  # type: ignore[assignment]
            agent.sync.link = agent.http  # type: ignore[assignment]
            datasets = [agent._describe(n, p) for n, p in sorted(agent.data.datasets.items())]
            self.svc.hello(site, "1a", "test", datasets, "session")
            self.agents[site] = agent

    def start_nodes(self) -> None:
        for site in SITES:
            thread = threading.Thread(target=self._serve, args=(site,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _serve(self, site: str) -> None:
        agent = self.agents[site]
        while not self.stop.is_set():
            try:
                agent.sync.fetch_pending()  # what the node's approval-sync thread does
                agent.sync.report()
                got = asyncio.run(self.svc.next_task(site, 0.2))  # the hub awaits it on its loop
                if got is None:
                    continue
                task_id, offer = got
                _, reply = agent.answer(offer.study_id, offer.head + offer.body, offer.digest)
                self.svc.receive_reply(site, task_id, reply, hashlib.sha256(reply).hexdigest())
            except Exception:  # noqa: BLE001 (a node keeps serving, as NodeAgent.run does)
                time.sleep(0.05)

    def close(self) -> None:
        self.stop.set()
        self.svc.stop()
        for thread in self.threads:
            thread.join(10)
        for agent in self.agents.values():
            agent.close()
        self.svc.db.dispose()

    def submit(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """Submit a study and approve it at every site (as their nodes report it), so it
        starts whether or not the node threads run."""
        return self.approve(self.svc.submit_study(cfg))

    def approve(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Every site's approval of the submitted study ``doc``, as their nodes report it
        (not left to the node threads' approval sync, which may run before the study
        exists)."""
        for site in SITES:
            self.svc.site_decided(site, doc["study_id"], Decision.APPROVED,
                                  doc["config_hash"], None)
        return doc

    def status(self, study_id: str) -> dict[str, Any]:
        return self.svc.study_status(study_id)

    def settled(self, study_id: str) -> dict[str, Any]:
        """The study's status once its runner thread has ended."""
        self.svc.wait_for(study_id, WAIT)
        assert study_id in self.svc.runner._runners, self.status(study_id)
        assert not self.svc.runner._runners[study_id].is_alive(), \
            "the study's thread is still running"
        return self.status(study_id)


@pytest.fixture
def fed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Federation]:
    monkeypatch.setattr(runner_module, "SETTLE_RETRY", (0.05, 0.2))
    federation = Federation(tmp_path)
    try:
        yield federation
    finally:
        federation.close()


def _wait(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _rounds(fed: Federation, study_id: str) -> list[int]:
    return [r["round"] for r in fed.status(study_id)["rounds"]]


def test_a_full_disk_pauses_the_study_and_resume_finishes_it_from_its_checkpoint(
        fed: Federation, tmp_path: Path) -> None:
    disk = FillingDisk(fed.svc.data_dir / "blobs", full_from=5)  # round 3's checkpoint
    fed.svc.state.blobs = disk
    fed.start_nodes()
    study_id = fed.submit(study_config(rounds=5))["study_id"]

    st = fed.settled(study_id)
    assert st["status"] == "paused", st
    assert st["current_round"] == 2 and _rounds(fed, study_id) == [1, 2]
    assert "No space left on device" in st["error"]
    assert f"fedcare study resume {study_id}" in st["error"]
    assert any("paused" in e["message"] for e in fed.svc.study_events(study_id))

    # Still full: resuming runs round 3 again and pauses again, nothing lost or doubled.
    assert fed.svc.resume_study(study_id)["resumed_after_round"] == 2
    st = fed.settled(study_id)
    assert (st["status"], st["current_round"]) == ("paused", 2)

    disk.full = False  # the operator freed space
    fed.svc.resume_study(study_id)
    st = fed.settled(study_id)
    assert (st["status"], st["current_round"], st["error"]) == ("completed", 5, None)
    assert _rounds(fed, study_id) == [1, 2, 3, 4, 5]
    history = json.loads((fed.svc.data_dir / "studies" / study_id / "history.json").read_text())
    assert [r["round"] for r in history["rounds"]] == [1, 2, 3, 4, 5]
    assert history["resumed_from_round"] == 2


def test_resume_refuses_what_is_not_paused(fed: Federation) -> None:
    fed.start_nodes()
    study_id = fed.submit(study_config(rounds=1))["study_id"]
    assert fed.settled(study_id)["status"] == "completed"

    with pytest.raises(NotResumable, match="completed"):
        fed.svc.resume_study(study_id)
    with pytest.raises(NotFound):
        fed.svc.resume_study("nosuchstudy")


class FullDatabase:
    """Makes the hub's database transactions fail as they do on a full disk: all of them
    while :attr:`full` is set, or the next :attr:`fail_next` ones. :attr:`real` is the
    unaffected session factory (for the test's own reads)."""

    def __init__(self, svc: HubService) -> None:
        self.full, self.fail_next, self.real = threading.Event(), 0, svc.db.session
        svc.db.session = self.session  # type: ignore[method-assign]

    @contextmanager
    def session(self) -> Iterator[Any]:
        if self.full.is_set() or self.fail_next > 0:
            self.fail_next -= 1
            raise sa.exc.OperationalError(
                "INSERT INTO events ...", {}, sqlite3.OperationalError("database or disk is full"))
        with self.real() as s:
            yield s


def test_a_study_is_never_left_running_without_its_thread_while_the_db_is_full(
        fed: Federation) -> None:
    db = FullDatabase(fed.svc)
    disk = FillingDisk(fed.svc.data_dir / "blobs", full_from=3)  # round 2's checkpoint
    disk.on_full = db.full.set  # the database shares the full disk
    fed.svc.state.blobs = disk
    fed.start_nodes()
    study_id = fed.submit(study_config(rounds=4))["study_id"]

    # Its end cannot be recorded: the thread keeps trying, so the study keeps its runner.
    _wait("the study's storage to fill up", db.full.is_set)
    time.sleep(0.5)  # several retries (not a timing assertion: any wait shows the same)
    assert fed.svc.runner._runners[study_id].is_alive()
    with db.real() as s:
        assert StudyRepo(s).get(study_id).status is StudyStatus.RUNNING  # type: ignore[union-attr]

    db.full.clear()  # space freed (blob writes still fail: the study pauses)
    st = fed.settled(study_id)
    assert (st["status"], st["current_round"]) == ("paused", 1)

    db.fail_next = 1
    with pytest.raises(StorageUnavailable, match="disk is full"):
        fed.svc.resume_study(study_id)
    disk.full = False
    fed.svc.resume_study(study_id)
    assert fed.settled(study_id)["status"] == "completed"


def test_a_failure_that_cannot_be_recorded_for_a_full_db_pauses_then_fails_on_resume(
        fed: Federation, monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit's second study: its thread died recording its failure. No node answers
    here (round 1 fails at its deadline) and the failure cannot be written at first."""
    db = FullDatabase(fed.svc)
    real_settle = fed.svc.runner._settle
    attempts: list[StudyStatus] = []

    def settle(study_id: str, status: StudyStatus, message: str | None) -> None:
        attempts.append(status)
        db.fail_next = 3  # the disk is full just as the failure is being recorded
        real_settle(study_id, status, message)

    monkeypatch.setattr(fed.svc.runner, "_settle", settle)
    study_id = fed.submit(study_config(rounds=2, run={"round_timeout": 1}))[
        "study_id"]

    st = fed.settled(study_id)
    assert attempts == [StudyStatus.FAILED]
    assert st["status"] == "paused", st
    assert "disk is full" in st["error"] and "no reply before the round deadline" in st["error"]

    monkeypatch.setattr(fed.svc.runner, "_settle", real_settle)
    fed.svc.resume_study(study_id)  # the storage is fine now: the real failure shows
    st = fed.settled(study_id)
    assert st["status"] == "failed" and "disk" not in st["error"], st


def test_a_crash_escaping_the_engine_still_ends_the_study(fed: Federation,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    def broken(study_id: str, transport: Any) -> Any:
        raise FedcareError("cannot build this study's engine")

    monkeypatch.setattr(fed.svc.runner, "_engine", broken)
    study_id = fed.submit(study_config(rounds=2))["study_id"]
    st = fed.settled(study_id)
    assert (st["status"], st["error"]) == ("failed", "cannot build this study's engine")


def test_the_api_resumes_and_answers_503_while_the_storage_is_full(
        fed: Federation, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from fedcare.hub.api import PeerTrust, create_app
    from tests.tokens import user_token

    app = create_app(fed.svc, PeerTrust(tmp_path / "fed" / "hub"))
    client = TestClient(app, headers={"Authorization": f"Bearer {user_token(fed.svc)}"})
    db = FullDatabase(fed.svc)
    disk = FillingDisk(fed.svc.data_dir / "blobs", full_from=1)
    fed.svc.state.blobs = disk
    fed.start_nodes()
    study_id = fed.approve(client.post("/v1/studies",
                                       json=study_config(rounds=2)).json())["study_id"]
    assert fed.settled(study_id)["status"] == "paused"

    db.full.set()  # a submission the hub cannot store: a 503 that says why, not a bare 500
    r = client.post("/v1/studies", json=study_config(rounds=2))
    assert r.status_code == 503 and "disk is full" in r.json()["detail"], r.text
    r = client.post(f"/v1/studies/{study_id}/resume")  # (the owner check reads it first)
    assert r.status_code == 503 and "cannot write" in r.json()["detail"], r.text
    db.full.clear()

    assert client.post("/v1/studies/nosuchstudy/resume").status_code == 404
    assert client.post(f"/v1/studies/{study_id}/resume",
                       headers={"Authorization": "Bearer wrong"}).status_code == 401
    disk.full = False
    r = client.post(f"/v1/studies/{study_id}/resume")
    assert r.status_code == 200 and r.json() == {
        "study_id": study_id, "status": "running", "resumed_after_round": 0}
    assert fed.settled(study_id)["status"] == "completed"
    r = client.post(f"/v1/studies/{study_id}/resume")
    assert r.status_code == 409 and "completed" in r.json()["detail"]


def test_a_round_that_fails_while_the_state_folder_is_full_pauses(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The replies of a round cannot be recorded on a full disk: the engine sees silence and
    fails the round; the hub checks its state folder before calling that a failure. Needs a
    real full file system (a tmpfs: root); skipped where mounting is not permitted."""
    import shutil
    import subprocess

    small = tmp_path / "small"
    small.mkdir()
    mounted = shutil.which("mount") and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)],
        capture_output=True, timeout=30).returncode == 0
    if not mounted:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        monkeypatch.setattr(runner_module, "SETTLE_RETRY", (0.05, 0.2))
        create_federation(tmp_path / "fed", hub_host="127.0.0.1", hub_port=1,
                          sites=list(SITES), site_kits=tmp_path / "kits")
        # The database elsewhere (it holds the outcome), the state folder on the tmpfs.
        svc = HubService(small / "hub", revocation=NeverRevoked(),
                         db_url=f"sqlite:///{tmp_path / 'hub.db'}")
        try:
            for site in SITES:
                svc.hello(site, "1a", "test", [{"name": DATASET, "rows": 100}], "s")
            with contextlib.suppress(OSError), open(small / "ballast", "wb") as fh:
                fh.write(b"\0" * (2 << 20))  # stops part-way: the file system is full
            doc = svc.submit_study(study_config(rounds=2, run={"round_timeout": 1}))
            study_id = doc["study_id"]  # no node answers: round 1 fails at its deadline
            for site in SITES:  # (approved, as the sites' nodes would report it)
                svc.site_decided(site, study_id, Decision.APPROVED, doc["config_hash"], None)
            svc.wait_for(study_id, WAIT)
            st = svc.study_status(study_id)
        finally:
            svc.stop()
            svc.db.dispose()
    finally:
        subprocess.run(["umount", str(small)], capture_output=True, timeout=30)
    assert st["status"] == "paused", st
    assert "No space left on device" in st["error"] and "round deadline" in st["error"]
