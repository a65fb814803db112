"""Fault injection in secure aggregation over the real networked federation (audit F2, F5).

The hub is SIGKILLed at each point of a secure round - with every fit reply in (a node holds
right after posting its round-2 fit reply), during ``sa_share``, ``sa_mask`` and ``sa_unmask``
(a node holds inside that step, its peers have answered it) and, for CKKS, during
``he_decrypt`` - for SecAgg, SecAgg+ and CKKS studies under distributed DP. Restarted on the
same folder, the hub runs round 2's protocol again (a new attempt, fresh keys) and the study
completes; every node trained each round once (a counter the nodes keep) and its privacy ledger
holds exactly one entry per round.

The nodes are the real ``fedcare node start`` processes; a ``sitecustomize`` module placed on
their ``PYTHONPATH`` adds the two test hooks (hold at a chosen step until released; count
trainings) without changing the product code.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load as st_load

from tests.integration.network import NetFederation, study_config

HOLD_TIMEOUT = 120.0

_HOOK = '''
"""Test hooks for fedcare nodes (tests/integration/test_secure_faults.py)."""
import json, os, time
from pathlib import Path

D = os.environ.get("FEDCARE_TEST_HOOKS")
if D:
    D = Path(D)
    SITE = os.environ["FEDCARE_TEST_SITE"]
    from fedcare.engine import executor
    from fedcare.node import agent

    def _hold(task_id, kind, round_, when):
        """Hold here if the hold file names this site, step and round (once)."""
        spec = D / f"hold-{SITE}.json"
        try:
            want = json.loads(spec.read_text())
        except (OSError, ValueError):
            return
        if (want["kind"], want["round"], want["when"]) != (kind, round_, when):
            return
        spec.unlink()
        (D / f"held-{SITE}").write_text(task_id)
        release, deadline = D / f"release-{SITE}", time.monotonic() + 300
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        release.unlink(missing_ok=True)

    _run = executor.SiteExecutor.run

    def run(self, task):
        if not hasattr(self, "_test_task"):
            learner, ex = self.learner, self

            class Counting:
                def __getattr__(self, name):
                    return getattr(learner, name)

                def fit(self, *a, **k):
                    with open(D / f"fits-{SITE}.log", "a") as fh:
                        fh.write(f"{ex._test_task.study} {ex._test_task.round}\\n")
                    return learner.fit(*a, **k)

            self.learner = Counting()
        self._test_task = task
        _hold(task.task_id, task.kind.value, task.round, "in")
        return _run(self, task)

    executor.SiteExecutor.run = run
    _send = agent.NodeAgent.send

    def send(self, task_id, reply):
        _send(self, task_id, reply)
        parts = task_id.split("/")
        _hold(task_id, parts[-2], int(parts[1][1:]), "after")

    agent.NodeAgent.send = send
'''


def _federation(fed: NetFederation) -> NetFederation:
    """``fed`` with hooked nodes (each with a privacy policy, so each keeps a ledger)."""
    hooks = fed.root / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(_HOOK)
    for site, conf in fed.node_configs.items():
        (fed.root / "data" / f"{site}-privacy.toml").write_text(
            "max_epsilon = 1000.0\ndelta = 1e-5\n")
        conf.write_text(conf.read_text() + f'\n[privacy]\npolicy = "{site}-privacy.toml"\n')
    fed.start_hub()
    for site in fed.sites:
        _start_node(fed, site)
    fed.wait_sites(list(fed.sites))
    return fed


def _start_node(fed: NetFederation, site: str) -> None:
    hooks = fed.root / "hooks"
    path = os.pathsep.join(p for p in (str(hooks), os.environ.get("PYTHONPATH")) if p)
    fed.start_node(site, env={"PYTHONPATH": path, "FEDCARE_TEST_HOOKS": str(hooks),
                              "FEDCARE_TEST_SITE": site})


@pytest.fixture(scope="module")
def secure_fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetFederation]:
    """One federation (hub + 3 hooked nodes) shared by the tests of this file: each kill -9
    case kills and restarts the hub (the nodes keep running, as they would); the last test
    kills gamma's node and starts it again."""
    fed = NetFederation(tmp_path_factory.mktemp("secure-faults"))
    try:
        yield _federation(fed)
    finally:
        fed.close()


def _hold(fed: NetFederation, site: str, kind: str, round_: int, when: str) -> None:
    hooks = fed.root / "hooks"
    for stale in (f"held-{site}", f"release-{site}"):
        (hooks / stale).unlink(missing_ok=True)
    (hooks / f"hold-{site}.json").write_text(json.dumps(
        {"kind": kind, "round": round_, "when": when}))


def _kill_when_held_and_restart(fed: NetFederation, site: str) -> str:
    """Wait until ``site``'s node holds, SIGKILL the hub, restart it, release the node; the
    held task's id."""
    hooks = fed.root / "hooks"
    held = fed.wait_until(f"{site} to hold", lambda: (hooks / f"held-{site}").exists(),
                          HOLD_TIMEOUT)
    assert held
    task_id = (hooks / f"held-{site}").read_text()
    fed.kill_hub()  # SIGKILL: no shutdown code runs
    fed.start_hub()  # same folder, database and port
    (hooks / f"release-{site}").write_text("go")
    return task_id


def _fits(fed: NetFederation, study_id: str) -> dict[str, Counter[int]]:
    """Per site: how many times it trained each round of the study."""
    out: dict[str, Counter[int]] = {}
    for site in fed.sites:
        log = fed.root / "hooks" / f"fits-{site}.log"
        lines = log.read_text().split() if log.exists() else []
        pairs = zip(lines[::2], lines[1::2], strict=True)
        out[site] = Counter(int(r) for s, r in pairs if s == study_id)
    return out


def _ledger(fed: NetFederation, site: str, study_id: str) -> list[tuple[int, str, str]]:
    path = fed.root / "state" / site / "privacy-ledger.jsonl"
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    return [(e["round"], e["task_id"], e["mechanism"]) for e in entries
            if e["study"] == study_id]


def _cases() -> list[Any]:
    steps = {"secagg": ["fit", "sa_share", "sa_mask", "sa_unmask"],
             "ckks": ["fit", "he_decrypt"],
             "secagg+": ["sa_share", "sa_unmask"]}
    return [pytest.param(protocol, step, id=f"{protocol}-{step}",
                         marks=[pytest.mark.slow] if protocol == "secagg+" else [])
            for protocol, kinds in steps.items() for step in kinds]


@pytest.mark.parametrize("protocol,step", _cases())
def test_hub_killed_during_a_secure_step_resumes_without_training_or_charging_twice(
        secure_fed: NetFederation, protocol: str, step: str) -> None:
    fed = secure_fed
    rounds = 2
    # CKKS: after the fit only the decrypting site (the first of the sum's, alpha) is asked
    holder = "alpha" if protocol == "ckks" else "gamma"
    _hold(fed, holder, step, 2, "after" if step == "fit" else "in")
    cfg = study_config(name=f"kill-{protocol}-{step}", rounds=rounds,
                       secure_aggregation={"protocol": protocol},
                       privacy={"mode": "dp_fedavg_distributed", "clip": 1.0,
                                "noise_multiplier": 1.0},
                       strategy={"min_completed": 2}, run={"round_timeout": 60})
    study_id = fed.submit(cfg)
    held = _kill_when_held_and_restart(fed, holder)
    assert f"/r2/{step}/{holder}" in held, held

    st = fed.wait_study(study_id, timeout=120)
    assert st["status"] == "completed", st.get("error")
    assert [r["round"] for r in st["rounds"]] == list(range(1, rounds + 1))
    for r in st["rounds"]:  # no site was lost to the kill
        assert r["sites_completed"] == list(fed.sites), (r["round"], r["sites_failed"])
    history = json.loads(fed.artifact(study_id, "history.json"))
    assert history.get("resumed_from_round") == 1
    recovery = [e["message"] for e in fed.events(study_id) if e["kind"] == "recovery"]
    assert any("round 2's secure aggregation" in m and "attempt 2" in m for m in recovery), \
        recovery
    for site in fed.sites:
        # trained each round once: round 2 was re-entered with the stored update
        assert _fits(fed, study_id)[site] == Counter({1: 1, 2: 1}), site
        # and charged once per round, each entry naming the round's (first) fit task
        assert _ledger(fed, site, study_id) == [
            (r, f"{study_id}/r{r}/fit/{site}", "dp_fedavg_distributed")
            for r in range(1, rounds + 1)], site
    node_log = fed.nodes[holder].tail(10**6)
    assert "without training again" in node_log, node_log[-2000:]


@pytest.mark.slow
def test_a_killed_secure_study_ends_with_the_uninterrupted_model(
        secure_fed: NetFederation) -> None:
    """Without DP noise the comparison is exact: a SecAgg sum does not depend on the masks,
    and the re-entered updates are the ones trained before the kill."""
    fed = secure_fed
    cfg = study_config(name="reference", rounds=2, secure_aggregation={"protocol": "secagg"},
                       strategy={"min_completed": 2}, run={"round_timeout": 60})
    reference = fed.run_study(cfg, timeout=120)
    _hold(fed, "gamma", "sa_mask", 2, "in")
    study_id = fed.submit({**cfg, "study": {**cfg["study"], "name": "killed"}})
    _kill_when_held_and_restart(fed, "gamma")
    st = fed.wait_study(study_id, timeout=120)
    assert st["status"] == "completed", st.get("error")
    want = st_load(fed.artifact(reference["study_id"], "model.safetensors"))
    got = st_load(fed.artifact(study_id, "model.safetensors"))
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_a_node_dying_during_sa_mask_leaves_a_round_of_two_in_a_three_site_study(
        secure_fed: NetFederation) -> None:
    """Audit F5 (expE3 study X), the demo's shape: 3 sites, secagg, min_completed 2, no
    threshold set. gamma's node is SIGKILLed during round 2's sa_mask: the round completes
    with alpha and beta and the study continues (gamma, restarted at once, has lost its
    session: it answers round 2's step with an error, then takes part in round 3). A
    threshold that would need all 3 sites is refused at submission."""
    fed = secure_fed
    bad = study_config(name="needs-all", secure_aggregation={"protocol": "secagg",
                                                             "threshold": 0.67},
                       strategy={"min_completed": 2})
    r = fed.call("POST", "/v1/studies", json=bad)
    assert r.status_code == 422, r.text
    assert "secure_aggregation.threshold" in r.text and "strategy.min_completed" in r.text

    _hold(fed, "gamma", "sa_mask", 2, "in")
    cfg = study_config(name="dropout", rounds=3, secure_aggregation={"protocol": "secagg"},
                       strategy={"min_completed": 2}, run={"round_timeout": 60})
    study_id = fed.submit(cfg)
    fed.wait_until("gamma to hold", lambda: (fed.root / "hooks" / "held-gamma").exists(),
                   HOLD_TIMEOUT)
    fed.kill_node("gamma")
    _start_node(fed, "gamma")
    st = fed.wait_study(study_id, timeout=150)
    assert st["status"] == "completed", st.get("error")
    rounds = {r["round"]: r for r in st["rounds"]}
    assert rounds[1]["sites_completed"] == ["alpha", "beta", "gamma"]
    assert rounds[2]["sites_completed"] == ["alpha", "beta"], rounds[2]["sites_failed"]
    assert "gamma" in rounds[2]["sites_failed"]
    assert rounds[3]["sites_completed"] == ["alpha", "beta", "gamma"]
