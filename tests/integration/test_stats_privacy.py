"""Feature statistics over the real hub-node protocol (audit F6 / F7).

A study that standardizes first asks every site for its row count and per-feature sums and
sums of squares. In a secure study those go through secure aggregation: the hub's whole state
folder (database, reply blobs kept with ``--keep-replies``, logs) and every stats reply it
stored hold no site's sums - only masked protocol messages - while the normalizer it computed
equals the exact federation-wide one. Under DP the statistics are clipped, noised and charged
to each site's ledger, so nodes whose policy requires DP now run a standardizing study.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

import numpy as np
import pytest

from fedcare.config import parse_config
from fedcare.core.params import ParamSpec
from fedcare.core.wire import decode_reply
from fedcare.data.standardize import federated_standardizer, site_sums
from fedcare.engine.executor import STATS
from fedcare.engine.privacy import stats_noise_multiplier
from fedcare.engine.secure import PROTOCOL_AUX
from fedcare.sim.runner import _Run
from tests.integration.network import RAW_DATASET, NetFederation, simulation_of, study_config
from tests.integration.network import net_fixture as net_fixture  # the "net" fixture

Net = Callable[..., NetFederation]
pytestmark = pytest.mark.slow

#: Declared ranges of the harness's features (breast-cancer data), for DP statistics.
RANGES = {"mean_radius": [5, 30], "mean_texture": [5, 40], "mean_perimeter": [40, 200],
          "mean_area": [100, 2600], "mean_smoothness": [0.05, 0.17],
          "mean_concavity": [0, 0.45], "worst_radius": [7, 37], "worst_texture": [12, 50]}


def _raw_train(fed: NetFederation, cfg: dict) -> list[np.ndarray]:
    """Each site's training rows as its node holds them (same file, split and order)."""
    sim = simulation_of(cfg, fed.tables, list(fed.sites))
    sim = parse_config({**sim, "data": {**sim["data"], "standardize": False},
                        "secure_aggregation": {"protocol": "none"},
                        "privacy": {"mode": "none"}})
    run = _Run(sim, None, None, False, False)
    run.prepare()
    return [s.x_train for s in run.sites]


def _assert_hub_never_held_sums(fed: NetFederation, trains: list[np.ndarray]) -> None:
    files = [p for p in (fed.hub_dir / "data").rglob("*") if p.is_file()]
    files += list(fed.hub_dir.glob("*.log"))
    raw = b"".join(p.read_bytes() for p in files)
    for x in trains:
        _, total, total_sq = site_sums(x)
        for v in (total, total_sq):
            for dtype in ("<f4", "<f8"):
                assert v[:3].astype(dtype).tobytes() not in raw, \
                    f"a site's plain sums ({dtype}) are in the hub's state"
            assert np.rint(v[:3] * 2.0**24).astype("<i8").tobytes() not in raw
            assert repr(float(v[0])).encode() not in raw


def _stats_replies(fed: NetFederation, study_id: str) -> list[bytes]:
    db = sqlite3.connect(fed.hub_dir / "data" / "hub.db")
    try:
        rows = db.execute("select blob_sha from replies where task_id like ?",
                          (f"{study_id}/r0/stats/%",)).fetchall()
    finally:
        db.close()
    blobs = fed.hub_dir / "data"
    return [next(blobs.rglob(sha[2:])).read_bytes() for (sha,) in rows]


@pytest.mark.parametrize("protocol", ["secagg", "ckks"])
def test_a_secure_studys_feature_statistics_reach_the_hub_only_as_their_sum(
        net: Net, protocol: str) -> None:
    fed = net().start(keep_replies=True)
    cfg = study_config(name=f"std-{protocol}", rounds=1, data={"dataset": RAW_DATASET,
                                                               "standardize": True},
                       secure_aggregation={"protocol": protocol})
    st = fed.run_study(cfg, timeout=120)
    trains = _raw_train(fed, cfg)
    # the normalizer is the federation-wide one (secagg: exact to 2^-24; CKKS: to ~1e-6)
    norm = json.loads(fed.artifact(st["study_id"], "history.json"))["normalizer"]
    mean, std = federated_standardizer(trains)
    np.testing.assert_allclose(norm["mean"], mean, rtol=1e-4)
    np.testing.assert_allclose(norm["std"], std, rtol=1e-3)
    # every stats reply the hub kept carries protocol messages only, never a site's sums
    replies = _stats_replies(fed, st["study_id"])
    assert len(replies) == len(fed.sites)
    for body in replies:
        u = decode_reply(body, ParamSpec({}), {PROTOCOL_AUX: None})
        assert set(u.aux) == {PROTOCOL_AUX} and not u.num_examples
    _assert_hub_never_held_sums(fed, trains)
    # the search is not vacuous: a plain study's stats replies put the sums on the hub's disk
    plain = study_config(name="std-plain", rounds=1,
                         data={"dataset": RAW_DATASET, "standardize": True})
    st = fed.run_study(plain, timeout=120)
    assert any(STATS in decode_reply(b, ParamSpec({}), {STATS: None}).aux
               for b in _stats_replies(fed, st["study_id"]))
    with pytest.raises(AssertionError, match="plain sums"):
        _assert_hub_never_held_sums(fed, trains)


def test_nodes_that_require_dp_run_a_standardizing_dp_study_and_charge_the_stats(
        net: Net) -> None:
    fed = net()
    for site, conf in fed.node_configs.items():
        policy = fed.root / "data" / f"{site}-privacy.toml"
        # Each site charges for the survivor threshold's shares (t = 2 of 3: a dropout may leave
        # only those in the sum), ~2.8 per round here with the statistics' 1: room for 2 rounds.
        policy.write_text("max_epsilon = 12.0\ndelta = 1e-5\nrequire_dp = true\n")
        conf.write_text(conf.read_text() + f'\n[privacy]\npolicy = "{policy.name}"\n')
    fed.start()
    cfg = study_config(name="dp-std", rounds=2,
                       data={"dataset": RAW_DATASET, "standardize": True},
                       privacy={"mode": "dp_fedavg_distributed", "clip": 1.0,
                                "noise_multiplier": 1.0},
                       secure_aggregation={"protocol": "secagg"},
                       run={"round_timeout": 120})  # a loaded machine: DP imports are slow
    # without declared ranges the noised statistics are impossible: refused with the reason
    refused = fed.call("POST", "/v1/studies", json=cfg)
    assert refused.status_code == 422 and "stats_clip" in refused.text, refused.text
    cfg["data"]["stats_clip"] = RANGES
    st = fed.run_study(cfg, timeout=180)
    assert all(r["sites_completed"] == sorted(fed.sites) for r in st["rounds"]), st["rounds"]
    z = stats_noise_multiplier(parse_config(cfg))
    assert z is not None and z > 1
    history = json.loads(fed.artifact(st["study_id"], "history.json"))
    privacy = history["privacy"]
    assert privacy["stats"]["noise_multiplier"] == z
    assert [r["round"] for r in privacy["rounds"]] == [0, 1, 2]
    from fedcare.privacy.dp.accounting import epsilon_of, sampled_gaussian_event

    both = epsilon_of([sampled_gaussian_event(z, 1.0, 1), sampled_gaussian_event(1.0, 1.0, 2)],
                      1e-5)
    assert privacy["epsilon"] == pytest.approx(both, rel=1e-6)
    std = np.asarray(history["normalizer"]["std"])
    assert np.isfinite(std).all() and (std > 0).all()
    for site in fed.sites:
        lines = (fed.root / "state" / site / "privacy-ledger.jsonl").read_text().splitlines()
        stats = [json.loads(x) for x in lines if "/r0/stats/" in x]
        assert len(stats) == 1, lines
        assert stats[0]["task_id"] == f"{st['study_id']}/r0/stats/{site}"
        assert stats[0]["mechanism"] == "dp_fedavg_distributed"
        assert stats[0]["noise_multiplier"] == z and stats[0]["steps"] == 1
