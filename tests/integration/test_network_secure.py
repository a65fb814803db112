"""Secure aggregation over the real hub-node protocol (HTTPS, mutual TLS, SQLite).

For masking (Bonawitz) and CKKS: the networked study equals its simulation, and the hub's
whole state folder - database, content-addressed blobs, logs - never contains any single
site's trained model or its update, in float32 or float64, nor a masked vector that decodes
to one. A node whose study is secure also refuses to send a plain update.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load as st_load

import fedcare
from fedcare.config import parse_config
from fedcare.core.messages import TaskKind
from fedcare.engine.history import History
from fedcare.engine.round_engine import EngineSettings, RoundEngine
from fedcare.engine.secure import contribution
from fedcare.sim.runner import _Run
from fedcare.strategies import FedAvg
from fedcare.transport.inmemory import InMemoryTransport
from tests.integration.network import NetFederation, simulation_of, study_config
from tests.integration.network import net_fixture as net_fixture  # the "net" fixture

Net = Callable[..., NetFederation]
pytestmark = pytest.mark.slow


def _round_one_truths(fed: NetFederation, cfg: dict) -> list[np.ndarray]:
    """Every site's round-1 trained model and contribution, computed here the plain way (same
    data, seeds and initial model as the study)."""
    sim_cfg = parse_config({**simulation_of(cfg, fed.tables, list(fed.sites)),
                            "secure_aggregation": {"protocol": "none"}})
    run = _Run(sim_cfg, None, None, False, False)
    run.prepare()
    executors = run._executors(run.sites)
    engine = RoundEngine(EngineSettings(study="truth", seed=sim_cfg.study.seed,
                                        train=run.train), FedAvg(),
                         InMemoryTransport({n: e.handle for n, e in executors.items()}),
                         [s.name for s in run.sites], run.initial, History(study="truth"))
    ex = engine.exchange(1, engine.sites, TaskKind.FIT, evaluate=False, train=run.train,
                         aux={})
    assert sorted(ex.updates) == sorted(fed.sites), ex.failures
    truths = []
    for u in ex.updates.values():
        trained = u.parameters.flatten("float64")
        truths += [trained, contribution(u.parameters, run.initial, u.num_examples)[:-1]]
    return truths


def _assert_hub_never_held(hub_state: Path, truths: list[np.ndarray]) -> None:
    files = [p for p in hub_state.rglob("*") if p.is_file()]
    assert any(p.suffix in (".db", ".sqlite") or "blob" in str(p) for p in files), files
    raw = b"".join(p.read_bytes() for p in files)
    for t in truths:
        for dtype in ("<f4", "<f8"):
            window = t[:6].astype(dtype).tobytes()
            assert window not in raw, f"a site's update ({dtype}) is in the hub's state"
        # a masked vector read back as fixed point must not be a site's contribution either
        fixed = np.rint(t[:6] * 2.0**24).astype("<i8").tobytes()
        assert fixed not in raw


@pytest.mark.parametrize("protocol", ["secagg", "ckks"])
def test_secure_study_over_https_equals_simulation_and_hub_never_holds_an_update(
        net: Net, protocol: str) -> None:
    # --keep-replies: the hub stores every reply it accepts (by default it holds them in
    # memory only), so the check below covers everything the sites sent.
    fed = net().start(keep_replies=True)
    cfg = study_config(name=f"sec-{protocol}", rounds=2, model={"name": "mlp", "hidden": [8]},
                       secure_aggregation={"protocol": protocol})
    st = fed.run_study(cfg, timeout=120)
    for r in st["rounds"]:
        assert r["sites_completed"] == sorted(fed.sites), r["sites_failed"]
    model = st_load(fed.artifact(st["study_id"], "model.safetensors"))
    sim = fedcare.simulate(simulation_of(cfg, fed.tables, list(fed.sites)))
    assert sim.final_parameters is not None
    tol = 1e-5 if protocol == "secagg" else 1e-4
    for k, v in sim.final_parameters.items():
        np.testing.assert_allclose(model[k], v, atol=tol, err_msg=k)
    _assert_hub_never_held(fed.hub_dir / "data", _round_one_truths(fed, cfg))
    # the truth finder is not vacuous: a plain study's state does hold the updates
    plain = study_config(name="plain", rounds=1, model={"name": "mlp", "hidden": [8]})
    fed.run_study(plain, timeout=120)
    with pytest.raises(AssertionError, match="is in the hub's state"):
        _assert_hub_never_held(fed.hub_dir / "data", _round_one_truths(fed, plain))


def test_a_plain_studys_updates_never_reach_the_hubs_disk_by_default(net: Net) -> None:
    """Without secure aggregation the hub sees each site's update, but by default holds it
    in memory only: its whole state folder (database, blobs, logs) never contains one. The
    test above shows the same search finds them when the hub keeps replies."""
    fed = net().start()
    cfg = study_config(name="plain-default", rounds=2, model={"name": "mlp", "hidden": [8]})
    st = fed.run_study(cfg, timeout=120)
    assert all(r["sites_completed"] == sorted(fed.sites) for r in st["rounds"]), st["rounds"]
    _assert_hub_never_held(fed.hub_dir / "data", _round_one_truths(fed, cfg))


def test_a_node_refuses_dp_work_past_its_budget_and_the_researcher_sees_why(net: Net) -> None:
    fed = net()
    policy = fed.root / "data" / "alpha-privacy.toml"
    policy.write_text("max_epsilon = 1.0\ndelta = 1e-5\n")
    conf = fed.node_configs["alpha"]
    conf.write_text(conf.read_text() + '\n[privacy]\npolicy = "alpha-privacy.toml"\n')
    for site in ("beta", "gamma"):  # a site policy counts a DP study's epsilon in a ledger
        (fed.root / "data" / f"{site}-privacy.toml").write_text(
            "max_epsilon = 100.0\ndelta = 1e-5\n")
        conf = fed.node_configs[site]
        conf.write_text(conf.read_text() + f'\n[privacy]\npolicy = "{site}-privacy.toml"\n')
    fed.start()
    cfg = study_config(name="dp-net", rounds=2,
                       privacy={"mode": "dp_fedavg_distributed", "clip": 1.0,
                                "noise_multiplier": 1.0},
                       secure_aggregation={"protocol": "secagg", "threshold": 0.6})
    st = fed.run_study(cfg, timeout=120)
    for r in st["rounds"]:
        assert r["sites_completed"] == ["beta", "gamma"]
        why = r["sites_failed"]["alpha"]
        assert "PrivacyBudgetError" in why and "limit" in why, why
    history = fed.artifact(st["study_id"], "history.json")
    import json

    privacy = json.loads(history)["privacy"]
    # 2 of 3 sites in each sum: the distributed noise fell short and is accounted as such
    from fedcare.privacy.dp.accounting import epsilon

    assert privacy["epsilon"] == pytest.approx(epsilon((2 / 3) ** 0.5, 1.0, 2, 1e-5), rel=1e-6)
    ledger = fed.root / "state" / "alpha" / "privacy-ledger.jsonl"
    assert not ledger.exists() or ledger.read_text() == ""
