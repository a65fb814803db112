"""The networked federation end to end: a real hub and real nodes over HTTPS on loopback.

Each test starts ``fedcare hub start`` and ``fedcare node start`` as subprocesses (see
:mod:`tests.integration.network`), drives them only through the public HTTPS API, the CLI and
signals, and kills every process it started at teardown.

"Equals its simulation" is the yardstick for correctness: the same study over the same files
with ``fedcare.simulate`` (in memory, uninterrupted) must give the same global model, so a
round lost, replayed or counted twice anywhere in the network path shows up as a difference.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from safetensors.numpy import load as st_load

import fedcare
from fedcare.config import FederatedData, parse_config
from fedcare.core.messages import ErrorReply
from fedcare.core.params import Parameters
from fedcare.core.wire import decode_update, encode_error, encode_update
from fedcare.engine.learner_factory import ModelShape, make_learner
from fedcare.node.agent import NodeAgent
from tests.integration.network import (
    DATASET,
    RAW_DATASET,
    SITES,
    NetFederation,
    simulation_of,
    study_config,
)
from tests.integration.network import net_fixture as net_fixture  # the "net" fixture

Net = Callable[..., NetFederation]
OCTET = "application/octet-stream"
pytestmark = pytest.mark.slow


def _simulated(fed: NetFederation, cfg: dict[str, Any]) -> Any:
    return fedcare.simulate(simulation_of(cfg, fed.tables, list(fed.sites)))


def _assert_same_model(net_model: dict[str, np.ndarray], sim: Any) -> None:
    assert sim.final_parameters is not None
    assert set(net_model) == set(sim.final_parameters)
    for k, v in sim.final_parameters.items():
        np.testing.assert_allclose(net_model[k], v, rtol=1e-6, atol=1e-7,
                                   err_msg=f"parameter {k!r}: network != simulation")


def _model(fed: NetFederation, study_id: str) -> dict[str, np.ndarray]:
    return st_load(fed.artifact(study_id, "model.safetensors"))


def _round_numbers(st: dict[str, Any]) -> list[int]:
    return [r["round"] for r in st["rounds"]]


def _assert_rounds_once_each(fed: NetFederation, st: dict[str, Any], rounds: int) -> None:
    """Rounds 1..R, each exactly once: in the hub's database, in the history it wrote and in
    its event log (a round recorded twice would show as a second "round N done")."""
    assert _round_numbers(st) == list(range(1, rounds + 1))
    history = json.loads(fed.artifact(st["study_id"], "history.json"))
    assert [r["round"] for r in history["rounds"]] == list(range(1, rounds + 1))
    done = Counter(int(m.group(1)) for e in fed.events(st["study_id"])
                   if (m := re.match(r"round (\d+) done", e["message"])))
    assert set(done) <= set(range(1, rounds + 1)) and max(done.values()) == 1, done


def _pg_url(request: pytest.FixtureRequest) -> str:
    pg = request.getfixturevalue("pg_server")
    url = pg.create_database()
    request.addfinalizer(lambda: pg.drop_database(url))
    return str(url)


# -- 1 and 7: a full study, on SQLite and on PostgreSQL ---------------------------------------
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_full_study_over_https_equals_its_simulation(net: Net, tmp_path: Path,
                                                     request: pytest.FixtureRequest,
                                                     backend: str) -> None:
    fed = net().start(db=_pg_url(request) if backend == "postgresql" else None)
    cfg = study_config(rounds=3)
    st = fed.run_study(cfg)

    _assert_rounds_once_each(fed, st, 3)
    for r in st["rounds"]:
        assert r["sites_completed"] == list(SITES) and not r["sites_failed"]
    for last in (0, 1, 2, 5):  # what a progress display asks for: the last N records
        got = fed.call("GET", f"/v1/studies/{st['study_id']}", params={"rounds": last})
        expected = st["rounds"][max(0, len(st["rounds"]) - last):]
        assert got.status_code == 200 and got.json()["rounds"] == expected, last
    assert fed.call("GET", f"/v1/studies/{st['study_id']}",
                    params={"rounds": -1}).status_code == 422

    # The files a researcher gets through the airlock (tests/integration/test_airlock_network.py
    # walks the CLI's export, the stewards' approvals and the download), read here on the hub.
    history = json.loads(fed.artifact(st["study_id"], "history.json"))
    assert history["mode"] == "network" and history["study_id"] == st["study_id"]
    assert set(history["final"]["site_metrics"]) == set(SITES)
    # Each site said how it chose its test rows, in its evaluation replies (issue 14, item 7).
    assert {s["name"]: s.get("test_split") for s in history["sites"]} == dict.fromkeys(
        SITES, "random 20 % split")
    assert "<html" in fed.artifact(st["study_id"], "report.html").decode().lower()
    model = _model(fed, st["study_id"])

    # data.standardize = false here (rows pre-scaled): both paths see identical numbers.
    sim = _simulated(fed, cfg)
    _assert_same_model(model, sim)
    # Not just the end point: every round's local training saw the same data and model.
    for net_round, sim_round in zip(history["rounds"], sim.rounds, strict=True):
        for site in SITES:
            for metric, value in sim_round.train_metrics[site].items():
                if "seconds" in metric:
                    continue  # wall-clock time, not a result
                assert net_round["train_metrics"][site][metric] == pytest.approx(
                    value, rel=1e-5, abs=1e-6), (net_round["round"], site, metric)

    # Raw feature scales with data.standardize = true: the hub pools the sites' sums (stats
    # tasks) into the federation-wide mean/std simulation computes from the same rows.
    cfg = study_config(name="scaled", rounds=2, data={"dataset": RAW_DATASET,
                                                      "standardize": True})
    st = fed.run_study(cfg)
    _assert_same_model(_model(fed, st["study_id"]), _simulated(fed, cfg))
    _assert_hub_bundle(fed, st["study_id"], cfg)


def _assert_hub_bundle(fed: NetFederation, study_id: str, cfg: dict[str, Any]) -> None:
    """The hub's model file is a bundle (issue 14, item 6) carrying the federation's
    standardization from the stats step: the one simulation scales the same rows by."""
    import pandas as pd

    from fedcare.config import content_hash
    from fedcare.engine.bundle import ModelBundle
    from fedcare.engine.predict import SavedModel
    from fedcare.sim.sites import input_standardization

    bundle = ModelBundle.from_bytes(fed.artifact(study_id, "model.safetensors"))
    sim_cfg = parse_config(simulation_of(cfg, fed.tables, list(fed.sites)))
    expected = input_standardization(sim_cfg.data, sim_cfg.study.seed)

    assert bundle.study_id == study_id and bundle.features == tuple(cfg["data"]["features"])
    assert bundle.content_hash == content_hash(parse_config(cfg))
    assert expected is not None and bundle.mean is not None and bundle.std is not None
    np.testing.assert_allclose(bundle.mean, expected["mean"], rtol=1e-5)
    np.testing.assert_allclose(bundle.std, expected["std"], rtol=1e-5)
    rows = pd.read_csv(next(iter(fed.tables[cfg["data"]["dataset"]].values())))
    assert SavedModel(bundle).predict_proba(rows).shape == (len(rows), 2)


# -- 2: the hub dies mid-study ----------------------------------------------------------------
def test_hub_killed_mid_study_resumes_and_ends_as_if_never_interrupted(net: Net) -> None:
    fed = net().start()
    rounds = 6
    # ~0.3 s of local training per round: slow enough to kill the hub between rounds 2 and 6.
    cfg = study_config(rounds=rounds, train={"local_epochs": 50}, run={"round_timeout": 20})
    study_id = fed.submit(cfg)
    fed.wait_study(study_id, until=lambda st: st["current_round"] >= 2,
                   what="two completed rounds")
    fed.kill_hub()  # SIGKILL: no shutdown code runs

    fed.start_hub()  # same folder, same database, same port
    st = fed.wait_study(study_id, timeout=90)
    assert st["status"] == "completed", st.get("error")
    history = json.loads(fed.artifact(study_id, "history.json"))
    assert 2 <= history.get("resumed_from_round", 0) < rounds, "the kill did not land mid-study"
    assert any(e["kind"] == "resume" for e in fed.events(study_id))
    _assert_rounds_once_each(fed, st, rounds)
    for r in st["rounds"]:  # no site's work was lost to the kill
        assert r["sites_completed"] == list(SITES), (r["round"], r["sites_failed"])
    _assert_same_model(_model(fed, study_id), _simulated(fed, cfg))


def test_sites_updates_never_reach_the_hubs_disk_by_default(net: Net) -> None:
    """A study resumes from its checkpoints, never from replies, and a site's individual
    update is the most sensitive thing the hub handles: by default the hub holds replies in
    memory only, and their rows are the record. (With --keep-replies they are stored: see
    test_replays_and_malformed_replies_are_refused_and_logged.)"""
    import sqlite3

    fed = net().start()
    st = fed.run_study(study_config(rounds=2))
    with sqlite3.connect(fed.hub_dir / "data" / "hub.db") as conn:
        replies = conn.execute(
            "SELECT r.blob_sha FROM replies r JOIN tasks t ON t.id = r.task_id "
            "WHERE t.study_id = ?", (st["study_id"],)).fetchall()
        model_sha, state_sha = conn.execute(
            "SELECT global_model, strategy_state FROM studies WHERE id = ?",
            (st["study_id"],)).fetchone()
    blobs = fed.hub_dir / "data" / "blobs"
    assert len(replies) == 3 * len(SITES)  # 2 rounds + the final evaluation
    assert not [sha for (sha,) in replies if (blobs / sha[:2] / sha[2:]).exists()]
    assert (blobs / model_sha[:2] / model_sha[2:]).exists()  # the checkpoint stays
    assert (blobs / state_sha[:2] / state_sha[2:]).exists()


@pytest.mark.parametrize("keep_replies", [False, True], ids=["in-memory", "kept-power-cut"])
def test_replies_the_hub_lost_are_asked_for_again(net: Net, keep_replies: bool) -> None:
    """A round waits for a dead site while the others' replies are accepted; the hub is
    killed. By default it held those replies in memory only; with --keep-replies they are
    stored without fsync, and a power cut loses them although their database rows survived
    (simulated: the files are deleted). Either way the restarted hub must ask those sites
    again, their nodes must send the reply they computed before (not train a second time),
    and the study must end with exactly the simulation's model."""
    import sqlite3

    fed = net().start(keep_replies=keep_replies)
    fed.run_study(study_config(name="warm-up", rounds=1))  # cold starts out of the way
    rounds = 3
    cfg = study_config(rounds=rounds, run={"round_timeout": 120})
    fed.kill_node("gamma")  # round 1 now waits for gamma, with alpha's and beta's replies in
    study_id = fed.submit(cfg)
    fed.approve_as("gamma", study_id)  # (its node approved it, then died)
    db = fed.hub_dir / "data" / "hub.db"

    def stored_replies() -> list[tuple[str, str]]:
        with sqlite3.connect(db) as conn:
            return conn.execute(
                "SELECT r.task_id, r.blob_sha FROM replies r JOIN tasks t ON t.id = r.task_id "
                "WHERE t.study_id = ?", (study_id,)).fetchall()

    fed.wait_until("two accepted replies", lambda: len(stored_replies()) >= 2, timeout=60)
    fed.kill_hub()
    lost = stored_replies()
    for _, sha in lost:
        blob = fed.hub_dir / "data" / "blobs" / sha[:2] / sha[2:]
        assert blob.exists() == keep_replies
        if keep_replies:  # the power cut: rows committed, bytes never reached the disk
            blob.unlink()

    fed.start_hub(keep_replies=keep_replies)
    fed.start_node("gamma")
    st = fed.wait_study(study_id, timeout=120)
    assert st["status"] == "completed", st.get("error")
    recovered = [e["message"] for e in fed.events(study_id) if e["kind"] == "recovery"]
    assert len(recovered) == len(lost), recovered
    why = "is unreadable" if keep_replies else "held in memory by the previous hub process"
    assert all(why in m for m in recovered), recovered
    for task_id, _ in lost:  # resent as computed, not trained again
        site = task_id.rsplit("/", 1)[-1]
        node_log = fed.nodes[site].tail(10**6)
        assert f"task {task_id} asked again" in node_log, node_log[-2000:]
    for r in st["rounds"]:
        assert r["sites_completed"] == list(SITES), (r["round"], r["sites_failed"])
    _assert_rounds_once_each(fed, st, rounds)
    _assert_same_model(_model(fed, study_id), _simulated(fed, cfg))


# -- 3: a node dies mid-study, then comes back ------------------------------------------------
def test_killed_node_is_skipped_then_rejoins(net: Net) -> None:
    fed = net().start()
    # A node's first task pays its cold start (pandas, torch, the model: seconds on a busy
    # box), which a 3 s round deadline does not cover: warm the nodes up with a study first.
    fed.run_study(study_config(name="warm-up", rounds=1))
    rounds = 10
    cfg = study_config(rounds=rounds, train={"local_epochs": 20},
                       strategy={"min_completed": 2}, run={"round_timeout": 3})
    study_id = fed.submit(cfg)
    fed.wait_study(study_id, until=lambda st: st["current_round"] >= 1, what="round 1")
    fed.kill_node("gamma")

    def gamma_failed(st: dict[str, Any]) -> bool:
        return any("gamma" in r["sites_failed"] for r in st["rounds"])

    st = fed.wait_study(study_id, until=gamma_failed, timeout=30,
                        what="a round that completes without gamma")
    failed = next(r for r in st["rounds"] if "gamma" in r["sites_failed"])
    assert failed["sites_completed"] == ["alpha", "beta"]
    assert "deadline" in failed["sites_failed"]["gamma"]
    assert st["current_round"] < rounds, "the study ended before gamma could come back"

    fed.start_node("gamma")
    st = fed.wait_study(study_id, timeout=90)
    assert st["status"] == "completed", st.get("error")
    assert _round_numbers(st) == list(range(1, rounds + 1))
    last_failed = max(r["round"] for r in st["rounds"] if "gamma" in r["sites_failed"])
    rejoined = [r["round"] for r in st["rounds"]
                if r["round"] > last_failed and "gamma" in r["sites_completed"]]
    assert rejoined, [(r["round"], r["sites_failed"]) for r in st["rounds"]]
    assert rejoined == list(range(rejoined[0], rounds + 1))  # and stayed


# -- 4: a kit from another federation ---------------------------------------------------------
def test_kit_of_another_federation_cannot_connect(net: Net) -> None:
    fed = net(sites=("alpha",))
    # Another CA, the same site name, issued for this very hub address and port.
    other = net(name="other", sites=("alpha",), port=fed.port)
    hub = fed.start_hub()

    # As shipped, the foreign kit does not even trust this hub (another CA signed it) ...
    with fed.site_client("alpha", kit=other.kit("alpha")) as client, \
            pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        client.get("/v1/health")
    # ... and a client that does trust it but presents the foreign certificate is refused by
    # the hub during the handshake (TLS 1.3 sends the alert after the client's Finished).
    context = ssl.create_default_context(cafile=str(fed.hub_dir / "ca.crt"))
    context.load_cert_chain(other.kit("alpha") / "site.crt", other.kit("alpha") / "site.key")
    with httpx.Client(base_url=fed.url, verify=context, timeout=10) as client, \
            pytest.raises(httpx.TransportError):
        client.post("/v1/node/hello", json={"version": "x", "session": "x", "datasets": []})

    # A real node with that kit keeps failing the handshake and is never listed.
    node = other.start_node("alpha")
    fed.wait_until("the foreign node to fail twice",
                   lambda: node.tail(20000).count("hub unreachable") >= 2, 60,
                   procs=[hub, node])
    assert "CERTIFICATE_VERIFY_FAILED" in node.tail(20000)
    assert fed.call("GET", "/v1/sites").json() == []
    with fed.site_client("alpha") as own:  # while the federation's own kit works
        assert own.get("/v1/node/task", params={"wait": 0}).status_code == 204


# -- 5: revocation without a restart ----------------------------------------------------------
def _hello(client: httpx.Client, rows: int = 100) -> httpx.Response:
    return client.post("/v1/node/hello", json={
        "version": "test", "session": "test", "datasets": [{"name": DATASET, "rows": rows}]})


def test_revoked_site_is_refused_on_its_next_request(net: Net) -> None:
    fed = net(sites=("alpha", "beta"))
    hub = fed.start_hub()
    with fed.site_client("alpha") as alpha, fed.site_client("beta") as beta:
        assert _hello(alpha).status_code == 200 and _hello(beta).status_code == 200
        assert alpha.get("/v1/node/task", params={"wait": 0}).status_code == 204

        # A long-poll that passed the certificate check before the revocation.
        inflight: dict[str, Any] = {}

        def long_poll() -> None:
            with fed.site_client("alpha") as c:
                try:
                    inflight["r"] = c.get("/v1/node/task", params={"wait": 6})
                except httpx.HTTPError as exc:  # reported by the assertion below
                    inflight["r"] = exc

        poller = threading.Thread(target=long_poll, daemon=True)
        poller.start()
        time.sleep(1.0)

        done = fed.cli("provision", "revoke", str(fed.fed_dir), "alpha",
                       "--reason", "key-compromise")
        assert done.returncode == 0, done.stdout + done.stderr

        def refused_now() -> httpx.Response | None:
            r = alpha.get("/v1/node/task", params={"wait": 0})
            return r if r.status_code == 403 else None

        r = fed.wait_until("alpha to be refused", refused_now, 15)  # the CRL is re-read <= 1 s
        assert "revoked" in r.json()["detail"].lower()
        assert _hello(alpha).status_code == 403
        refused = alpha.post("/v1/node/reply", params={"task_id": "x/r1/fit/alpha"},
                             content=b"x", headers={"Content-Type": OCTET,
                                                    "X-Content-SHA256": "0" * 64})
        assert refused.status_code == 403
        assert beta.get("/v1/node/task", params={"wait": 0}).status_code == 204

        # A study naming the revoked site is refused; one that names no sites leaves it out,
        # and the in-flight long-poll never hands it a task (nor the global model in one).
        named = fed.call("POST", "/v1/studies",
                         json=study_config(rounds=1, data={"sites": ["alpha", "beta"]}))
        assert named.status_code == 422 and "revoked" in named.json()["detail"], named.text
        sid = fed.submit(study_config(rounds=1))
        assert fed.status(sid)["sites"] == ["beta"]
        poller.join(timeout=30)
        assert not poller.is_alive()
        got = inflight["r"]
        assert isinstance(got, httpx.Response) and got.status_code in (204, 403), got

    assert hub.alive() and fed.hub is hub  # never restarted


# -- 6: replays and protocol abuse with a site's own kit --------------------------------------
def _post(client: httpx.Client, task_id: str, body: Any, *, sha: str | None = None,
          ctype: str = OCTET) -> httpx.Response:
    if sha is None and isinstance(body, bytes):
        sha = hashlib.sha256(body).hexdigest()
    headers = {"Content-Type": ctype}
    if sha is not None:
        headers["X-Content-SHA256"] = sha
    return client.post("/v1/node/reply", params={"task_id": task_id}, content=body,
                       headers=headers)


def _with_nan(reply: bytes, cfg: dict[str, Any]) -> bytes:
    """The same update with one weight set to NaN (a well-formed message otherwise)."""
    parsed = parse_config(cfg)
    assert isinstance(parsed.data, FederatedData)
    spec = make_learner(parsed, ModelShape.of_federated(parsed.data)).initial_parameters().spec
    update = decode_update(reply, spec)
    poisoned = {k: np.array(v, copy=True) for k, v in update.parameters.items()}
    poisoned[next(iter(poisoned))].reshape(-1)[0] = np.nan
    return encode_update(dataclasses.replace(update, parameters=Parameters(poisoned)))


def test_replays_and_malformed_replies_are_refused_and_logged(net: Net, tmp_path: Path) -> None:
    fed = net(sites=("alpha", "beta"))
    # --keep-replies: accepted replies go to the blob store, so that "refused before the
    # store" below is checked against a store that does receive replies.
    fed.start_hub(max_body_mb=1, keep_replies=True)
    # Both sites are driven by the test through the node's own code (NodeAgent): it polls
    # and computes real replies, and the test decides what is posted, and how.
    agents = {s: NodeAgent(fed.kit(s), fed.node_configs[s], state_dir=tmp_path / s,
                           poll_wait=15) for s in fed.sites}
    alpha, beta = fed.site_client("alpha"), fed.site_client("beta")
    try:
        for agent in agents.values():
            agent.hello()
        cfg = study_config(rounds=1, run={"round_timeout": 60})
        study_id = fed.submit(cfg)
        for agent in agents.values():  # what each node's approval sync does (pre-approved)
            agent.sync.fetch_pending()
            agent.sync.report()
        replies = {}
        for site, agent in agents.items():
            got = agent.poll()
            assert got is not None and got[0] == study_id
            replies[site] = agent.answer(*got)
        beta_task, beta_reply = replies["beta"]
        nan_reply = _with_nan(beta_reply, cfg)
        hijack = encode_error(ErrorReply(beta_task, "alpha", 1, "X", "alpha answers for beta"))
        never_sent = encode_error(ErrorReply(f"{study_id}/r9/fit/beta", "beta", 9, "X", "y"))

        expect = {  # what each abuse must get, and the reason `study logs` must show
            "sha": (_post(beta, beta_task, beta_reply, sha="0" * 64), 422, "X-Content-SHA256"),
            "type": (_post(beta, beta_task, beta_reply, ctype="application/json"), 415,
                     "application/octet-stream"),
            "garbage": (_post(beta, beta_task, b"\x00 not a fedcare message"), 422,
                        "not a fedcare message"),
            "nan": (_post(beta, beta_task, nan_reply), 422, "NaN"),
            "big": (_post(beta, beta_task, b"\0" * (1024 * 1024 + 1)), 413, "limit"),
            "big-chunked": (_post(beta, beta_task, iter([b"\0" * 700_000] * 2),
                                  sha="0" * 64), 413, "limit"),
            "not-sent-here": (_post(alpha, beta_task, hijack), 403,
                              "was not sent to this site"),
            "never-sent": (_post(beta, f"{study_id}/r9/fit/beta", never_sent), 404, "no task"),
        }
        for name, (r, code, _) in expect.items():
            assert r.status_code == code, (name, r.status_code, r.text)
        for body in (nan_reply, hijack, never_sent):  # refused before reaching the blob store
            sha = hashlib.sha256(body).hexdigest()
            assert not (fed.hub_dir / "data" / "blobs" / sha[:2] / sha[2:]).exists()
        st = fed.status(study_id)
        assert st["current_round"] == 0 and st["status"] == "running"  # nothing counted

        # The genuine reply is accepted once; its replay is a 409.
        assert _post(beta, beta_task, beta_reply).status_code == 202
        sha = hashlib.sha256(beta_reply).hexdigest()
        assert (fed.hub_dir / "data" / "blobs" / sha[:2] / sha[2:]).exists()
        replay = _post(beta, beta_task, beta_reply)
        assert replay.status_code == 409, replay.text
        assert _post(alpha, *replies["alpha"]).status_code == 202
        for agent in agents.values():  # the final evaluation, answered normally
            got = agent.poll()
            assert got is not None
            agent.send(*agent.answer(*got))
        st = fed.wait_study(study_id)
        assert st["status"] == "completed", st.get("error")
        assert st["rounds"][0]["sites_completed"] == ["alpha", "beta"]
        assert not st["rounds"][0]["sites_failed"]
        # Beta counted once, the NaN update never: the model is the simulation's.
        _assert_same_model(_model(fed, study_id), _simulated(fed, cfg))

        logs = fed.cli("study", "logs", study_id, "--federation", str(fed.fed_dir))
        assert logs.returncode == 0, logs.stderr
        rejected = [" ".join(line.split()) for line in logs.stdout.splitlines()
                    if " rejected " in line]
        for name, (_, _, reason) in [*expect.items(), ("replay", (None, 409, "already"))]:
            assert any(reason in line for line in rejected), (name, reason, *rejected)
        assert len(rejected) == len(expect) + 1, logs.stdout
    finally:
        alpha.close()
        beta.close()
        for agent in agents.values():
            agent.close()
