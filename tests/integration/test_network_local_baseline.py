"""Local-only baselines at the sites of a networked study (issue 14, item 14): a hub and three
real nodes; the study opts in with ``[baselines] local_at_sites = true``; two sites train the
study's initial model alone and report held-out metrics (the same numbers the simulation's
local-only baseline gets from the same files), the third site's node config forbids it: it
refuses, the study log says why, and the study completes all the same."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import numpy as np
import pytest

import fedcare
from tests.integration.network import (
    NetFederation,
    simulation_of,
    study_config,
)
from tests.integration.network import net_fixture as net_fixture  # the "net" fixture

pytestmark = pytest.mark.slow


def test_sites_report_local_baselines_and_a_forbidding_site_refuses(
        net: Callable[..., NetFederation]) -> None:
    fed = net()
    strict = fed.node_configs["gamma"]
    strict.write_text(strict.read_text() + "\n[baselines]\nlocal = false\n")
    fed.start()
    cfg = study_config(name="net-local", rounds=3,
                       baselines={"local": False, "centralized": False,
                                  "local_at_sites": True})

    st = fed.run_study(cfg)

    history = json.loads(fed.artifact(st["study_id"], "history.json"))
    local = history["baselines"]["local"]
    assert set(local["site_metrics"]) == {"alpha", "beta"}
    assert "accuracy" in local["global_metrics"]
    assert "gamma" in local["sites_failed"]
    assert "[baselines] local = false" in local["sites_failed"]["gamma"]
    # the federated model was still evaluated at every site
    assert set(history["final"]["site_metrics"]) == {"alpha", "beta", "gamma"}
    log = [e["message"] for e in fed.events(st["study_id"])]
    assert any("gamma" in m and "local-only baseline" in m and "local = false" in m
               for m in log), log
    report = fed.artifact(st["study_id"], "report.html").decode()
    assert "local-only" in report
    # the comparison in words, for the federation and for each site
    assert re.search(r"federated is (the same as|[\d.]+ points (better|worse) than) "
                     r"local-only \(mean over sites\)", report)
    for site in ("alpha", "beta"):
        assert re.search(rf"<b>{site}</b>: federated is (the same as|[\d.]+ points "
                         r"(better|worse) than) its local-only model", report)
    assert "<b>gamma</b>: no local-only model: Refused: site gamma" in report

    # The same study simulated over the same files: the same per-site local-only metrics.
    sim_cfg = simulation_of(cfg, fed.tables, list(fed.sites))
    sim_cfg["baselines"] = {"local": True, "centralized": False}
    sim = fedcare.simulate(sim_cfg).to_dict()["baselines"]["local"]
    for site in ("alpha", "beta"):
        for metric, value in local["site_metrics"][site].items():
            np.testing.assert_allclose(value, sim["site_metrics"][site][metric], rtol=1e-5,
                                       atol=1e-6, err_msg=f"{site} {metric}")


def test_a_study_without_the_opt_in_sends_no_local_baseline_task(
        net: Callable[..., NetFederation]) -> None:
    fed = net(sites=("alpha", "beta"))
    fed.start()

    st = fed.run_study(study_config(name="net-nolocal", rounds=1))

    history = json.loads(fed.artifact(st["study_id"], "history.json"))
    assert "local" not in history.get("baselines", {})
    assert not any("local-only" in e["message"] for e in fed.events(st["study_id"]))


def test_under_dp_the_baselines_train_without_dp_charge_nothing_and_require_dp_refuses(
        net: Callable[..., NetFederation]) -> None:
    fed = net()
    for site, conf in fed.node_configs.items():  # every site keeps a ledger; gamma needs DP
        policy = fed.root / "data" / f"{site}-privacy.toml"
        policy.write_text("max_epsilon = 50.0\ndelta = 1e-5\n"
                          + ("require_dp = true\n" if site == "gamma" else ""))
        conf.write_text(conf.read_text() + f'\n[privacy]\npolicy = "{policy.name}"\n')
    fed.start()
    cfg = study_config(name="net-local-dp", rounds=2,
                       privacy={"mode": "dp_sgd", "clip": 1.0, "noise_multiplier": 1.0,
                                "delta": 1e-5},
                       baselines={"local": False, "centralized": False,
                                  "local_at_sites": True},
                       run={"round_timeout": 120})

    st = fed.run_study(cfg, timeout=180)

    history = json.loads(fed.artifact(st["study_id"], "history.json"))
    local = history["baselines"]["local"]
    assert set(local["site_metrics"]) == {"alpha", "beta"}
    assert local["privacy"] == "none" and local["note"] == "no DP — reference only"
    assert "require_dp" in local["sites_failed"]["gamma"]
    for site in fed.sites:  # the local baseline charged nothing to any ledger
        ledger = (fed.root / "state" / site / "privacy-ledger.jsonl").read_text()
        assert "local_baseline" not in ledger and "/r1/fit/" in ledger
