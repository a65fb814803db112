"""A rogue site against a real hub: a huge header number is a 422 (F1), a claimed weight is
capped to what the site declared and flagged (F3).

The audit's expD2.py / expD.py, with real processes on loopback and mutual TLS: alpha and beta
run real nodes; gamma is driven by the test over raw HTTPS with its own kit (as the audit's
``rogue.py``). gamma says ``rows: 190`` in its hello, then

- round 1: posts its unchanged model with ``num_examples = 10**400`` (F1: the study used to
  fail with OverflowError) - now a 422, logged; then a plain reply;
- round 2: posts ``params + 1e4`` with ``num_examples = 10**12`` (F3: the global model used
  to become the poisoned one, ``[10001.5, ...]``, with nothing logged).

Checks: the study completes; gamma's round-2 weight is its declared 190 rows (+9 slack), not
10**12 - so the model moves by gamma's declared share of the poison, no more; the cap and the
outlier are flagged in the round's record, in history.json and in the study's event log.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from safetensors.numpy import load as st_load

from fedcare.core.messages import ErrorReply, Task, Update, UpdateKind
from fedcare.core.params import Parameters
from fedcare.core.wire import decode_task, encode_error, encode_update
from tests.integration.network import DATASET, NetFederation, study_config
from tests.integration.network import net_fixture as net_fixture  # the "net" fixture

pytestmark = pytest.mark.slow
OCTET = "application/octet-stream"
DECLARED = 190


def _post(client: httpx.Client, task_id: str, body: bytes) -> httpx.Response:
    import hashlib

    return client.post("/v1/node/reply", params={"task_id": task_id}, content=body,
                       headers={"Content-Type": OCTET,
                                "X-Content-SHA256": hashlib.sha256(body).hexdigest()})


def _next_task(fed: NetFederation, gamma: httpx.Client) -> Task:
    def poll() -> Task | None:
        r = gamma.get("/v1/node/task", params={"wait": 5})
        return decode_task(r.content) if r.status_code == 200 else None

    return fed.wait_until("a task for gamma", poll, 90.0)


def _update(task: Task, params: Parameters, num_examples: int) -> bytes:
    return encode_update(Update(task_id=task.task_id, site="gamma", round=task.round,
                                kind=UpdateKind.FULL, parameters=params,
                                num_examples=num_examples))


def _huge_header(task: Task) -> bytes:
    """A valid update whose header says num_examples = 10**400 (a valid JSON integer)."""
    from fedcare.core.framing import unframe
    from fedcare.core.wire import MAGIC

    good = _update(task, task.parameters, 150)
    header, body = unframe(good, MAGIC, what="message", max_header=1 << 20)
    header["num_examples"] = 10**400
    hb = json.dumps(header).encode()
    return MAGIC + len(hb).to_bytes(4, "little") + hb + bytes(body)


def test_a_rogue_site_cannot_overflow_or_outweigh_the_federation(
        net: Callable[..., NetFederation]) -> None:
    fed = net()
    fed.start_hub()
    for site in ("alpha", "beta"):
        fed.start_node(site)
    gamma = fed.site_client("gamma")
    try:
        hello = gamma.post("/v1/node/hello", json={
            "version": "0.1.0", "session": "rogue",
            "datasets": [{"name": DATASET, "rows": DECLARED}]})
        assert hello.status_code == 200, hello.text
        fed.wait_sites(["alpha", "beta", "gamma"])
        cfg = study_config(rounds=2, strategy={"min_completed": 2},
                           run={"round_timeout": 90})
        study_id = fed.submit(cfg)
        fed.approve_as("gamma", study_id)  # the rogue approves: it wants in

        # round 1: F1's reply is refused with a 4xx, the task stays open for a valid one
        t1 = _next_task(fed, gamma)
        huge = _post(gamma, t1.task_id, _huge_header(t1))
        assert huge.status_code == 422, huge.text
        assert "num_examples" in huge.json()["detail"]
        assert _post(gamma, t1.task_id, _update(t1, t1.parameters, 150)).status_code == 202

        # round 2: the poisoned update with a weight of 10**12 (expD.py)
        t2 = _next_task(fed, gamma)
        assert t2.round == 2
        round1_model = t2.parameters
        poison = Parameters({k: (v + 1e4).astype(v.dtype) for k, v in round1_model.items()})
        assert _post(gamma, t2.task_id, _update(t2, poison, 10**12)).status_code == 202

        t3 = _next_task(fed, gamma)  # the final evaluation: gamma declines it
        assert _post(gamma, t3.task_id, encode_error(ErrorReply(
            t3.task_id, "gamma", t3.round, "Refused", "no"))).status_code == 202

        st = fed.wait_study(study_id, timeout=120)
        assert st["status"] == "completed", st.get("error")
        r1, r2 = st["rounds"]
        assert r1["sites_completed"] == ["alpha", "beta", "gamma"]
        assert "gamma" not in r1["sites_flagged"]  # its unchanged model: no outlier, no cap
        flag = r2["sites_flagged"]["gamma"]
        assert f"claimed {10**12} training examples" in flag and "capped to 199" in flag
        assert "robust z-scores above the round's median" in flag
        assert set(r2["sites_flagged"]) == {"gamma"}
        assert r2["sites_completed"] == ["alpha", "beta", "gamma"]  # flagged, not dropped

        # The global model moved by gamma's DECLARED share of the poison, not by all of it.
        final = st_load(fed.artifact(study_id, "model.safetensors"))
        history = json.loads(fed.artifact(study_id, "history.json"))
        rows = {s["name"]: s["train_rows"] for s in history["sites"]}
        share = 199 / (199 + rows["alpha"] + rows["beta"])
        for k, before in round1_model.items():
            shift = final[k].astype(np.float64) - before.astype(np.float64)
            # honest sites move each weight by ~1 at most in one round; the poison by 1e4
            np.testing.assert_allclose(shift, 1e4 * share, atol=25.0, err_msg=k)
            assert np.all(np.abs(shift) < 0.5e4)  # was ~1e4 (the audit: 10001.5 vs 1.50)
        assert history["rounds"][1]["sites_flagged"] == r2["sites_flagged"]
        assert history["example_bounds"]["gamma"] == DECLARED + 9

        events = fed.events(study_id)
        flagged = [e for e in events if e["kind"] == "flagged"]
        assert len(flagged) == 1 and flagged[0]["site"] == "gamma"
        assert "round 2" in flagged[0]["message"] and "capped to 199" in flagged[0]["message"]
        rejected = [e["message"] for e in events if e["kind"] == "rejected"]
        assert any("num_examples" in m for m in rejected), rejected
        assert fed.hub is not None and fed.hub.alive()
    finally:
        gamma.close()
