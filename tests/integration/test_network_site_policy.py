"""The site policy at real nodes over HTTPS (issue 13, point 4): a hub and three node
processes. Beta's policy keeps its training loss at the site: beta's replies leave without
it. Gamma's steward keeps the strict default: a plain study never trains at gamma,
and the researcher reads gamma's reason - each rule, not gamma's figures - while the study
completes at alpha and beta. Then gamma's steward edits the policy (no restart) to a total
epsilon of 3, of which gamma's ledger has spent 1.55: a DP study asking 2 is refused at gamma
for its budget, gamma's ledger is not charged, and the other sites train it."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from fedcare.governance.audit_log import EventKind, read
from fedcare.governance.site_policy import default_policy, policy_toml
from fedcare.node.ledger_anchor import ledger_key
from fedcare.privacy.dp.ledger import LedgerEntry, PrivacyLedger, SitePrivacyPolicy
from tests.integration.network import (
    NetFederation,
    permissive_policy,
    study_config,
)
from tests.integration.network import net_fixture as net_fixture  # the "net" fixture

pytestmark = pytest.mark.slow


def _kinds(fed: NetFederation, site: str) -> list[EventKind]:
    return [e.kind for e in read(fed.root / "state" / site / "audit.jsonl")]


def test_a_study_the_site_policy_refuses_never_trains_there_and_the_researcher_sees_why(
        net: Callable[..., NetFederation]) -> None:
    fed = net()
    for site in fed.sites:  # every site counts epsilon in a ledger (a DP study needs one)
        (fed.root / "data" / f"{site}-privacy.toml").write_text(
            "max_epsilon = 100.0\ndelta = 1e-5\n")
        conf = fed.node_configs[site]
        conf.write_text(conf.read_text() + f'\n[privacy]\npolicy = "{site}-privacy.toml"\n')
    # Beta keeps its training loss curve at the site (the rest of its policy permissive).
    (fed.root / "data" / "beta-policy.toml").write_text(
        permissive_policy().replace('fit = ["train_loss", ', 'fit = ['))
    gamma_policy = fed.root / "data" / "gamma-policy.toml"
    gamma_policy.write_text(policy_toml(default_policy()))
    # An earlier study spent epsilon 1.55 of gamma's data (signed with gamma's key).
    ledger = PrivacyLedger(fed.root / "state" / "gamma" / "privacy-ledger.jsonl",
                           SitePrivacyPolicy(max_epsilon=100.0, delta=1e-5),
                           key=ledger_key(fed.kit("gamma")))
    ledger.charge(LedgerEntry(study="earlier", round=1, task_id="earlier/r1/fit/gamma",
                              mechanism="dp_fedavg_distributed", noise_multiplier=2.5,
                              sample_rate=1.0, steps=1, delta=1e-5))
    spent = ledger.spent().epsilon
    assert 1.5 < spent < 1.6
    fed.start()

    # 1. A plain study: gamma's strict policy refuses it.
    st = fed.run_study(study_config(name="plain", rounds=2), timeout=120)
    for r in st["rounds"]:
        assert r["sites_completed"] == ["alpha", "beta"], r
    # Round 1: gamma's reply names each rule; its node also reports the refusal as the site's
    # decision, so the hub leaves gamma out of every later round (never sent the model).
    why = st["rounds"][0]["sites_failed"]["gamma"]
    assert "site gamma refuses the study under its site policy" in why, why
    assert "rule privacy.require_dp: the study has no differential privacy" in why
    assert "rule secure_aggregation.required" in why
    assert "left out of this study" in st["rounds"][1]["sites_failed"]["gamma"]
    decided = {a["site"]: a for a in st["approvals"]}
    assert decided["gamma"]["decision"] == "refused", decided
    assert "rule privacy.require_dp" in decided["gamma"]["reason"], decided
    history = json.loads(fed.artifact(st["study_id"], "history.json"))
    for r in history["rounds"]:
        assert "train_loss" in r["train_metrics"]["alpha"], r["train_metrics"]
        assert "train_loss" not in r["train_metrics"]["beta"] and "steps" in r[
            "train_metrics"]["beta"]
    assert EventKind.METRICS_WITHHELD in _kinds(fed, "beta")
    log = fed.cli("study", "logs", st["study_id"], "--federation", str(fed.researcher_dir))
    assert "rule privacy.require_dp" in " ".join(log.stdout.split()), log.stdout + log.stderr
    kinds = _kinds(fed, "gamma")
    assert EventKind.POLICY_REFUSED in kinds and EventKind.UPDATE_SENT not in kinds
    assert EventKind.TASK_REFUSED in kinds

    # 2. The steward allows plain studies but caps the total epsilon at 3 (no restart).
    gamma_policy.write_text(permissive_policy().replace(
        "max_epsilon_per_study = 1000.0\nmax_epsilon_total = 1000.0",
        "max_epsilon_per_study = 3.0\nmax_epsilon_total = 3.0"))
    cfg = study_config(name="dp", rounds=2,
                       privacy={"mode": "dp_fedavg_distributed", "clip": 1.0,
                                "target_epsilon": 2.0},
                       secure_aggregation={"protocol": "secagg", "threshold": 0.6})
    r = fed.call("POST", "/v1/studies", params={"force": "true"}, json=cfg)  # 2 rounds: noisy
    assert r.status_code == 201, r.text
    st = fed.wait_study(r.json()["study_id"], timeout=180)
    assert st["status"] == "completed", st.get("error")
    for r in st["rounds"]:
        assert r["sites_completed"] == ["alpha", "beta"], r
    why = st["rounds"][0]["sites_failed"]["gamma"]  # later rounds: left out (as above)
    assert "rule privacy.max_epsilon_total: refused by the site's policy" in why, why
    assert f"{spent:g}" not in why and f"{3 - spent:g}" not in why  # they stay at gamma
    gamma = next(a for a in st["approvals"] if a["site"] == "gamma")
    assert f"{spent:g}" not in (gamma["reason"] or "") and gamma["decision"] == "refused"
    assert ledger.spent().epsilon == spent and len(ledger.entries()) == 1  # nothing charged
    refusals = [e for e in read(fed.root / "state" / "gamma" / "audit.jsonl")
                if e.kind is EventKind.POLICY_REFUSED]
    assert f"({spent:g} spent)" in refusals[-1].details["why"]
    # alpha and beta trained it, under their own budgets
    history = json.loads(fed.artifact(st["study_id"], "history.json"))
    assert history["privacy"]["mechanism"] == "dp_fedavg_distributed"
