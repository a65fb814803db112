"""The privacy steps compose to the very same numbers as before they were steps.

Moving DP-FedAvg, secure aggregation and central noise out of ``if`` branches (site filters in
:mod:`fedcare.engine.filters`, hub steps in :mod:`fedcare.engine.aggregation`) must not change
one bit of a model, an epsilon or a ledger charge. The digests below were recorded from the
code before the change (main at 0e978a0); each run here must reproduce them exactly.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pytest

import fedcare

BASE: dict[str, Any] = {
    "study": {"name": "pin", "rounds": 2, "seed": 5},
    "data": {"source": "builtin", "sites": 3, "partition": "iid", "standardize": False},
    "model": {"name": "logreg"}, "train": {"lr": 0.2, "batch_size": 32},
    "baselines": {"local": False, "centralized": False}}
STATS = {"standardize": True, "stats_clip": [0, 4300]}


def _study(privacy: dict[str, Any] | None = None, secure: str | None = None,
           data: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg = {**BASE, "data": {**BASE["data"], **(data or {})}}
    if privacy is not None:
        cfg["privacy"] = privacy
    if secure is not None:
        cfg["secure_aggregation"] = {"protocol": secure}
    return cfg


CASES: dict[str, dict[str, Any]] = {
    "plain": _study(),
    "plain_stats": _study(data={"standardize": True}),
    "dp_fedavg_central": _study({"mode": "dp_fedavg_central", "clip": 0.05,
                                 "noise_multiplier": 0.7}),
    "dp_fedavg_distributed_secagg": _study({"mode": "dp_fedavg_distributed", "clip": 0.05,
                                            "noise_multiplier": 0.7}, "secagg"),
    "dp_fedavg_central_secagg_stats": _study({"mode": "dp_fedavg_central", "clip": 0.05,
                                              "noise_multiplier": 0.7}, "secagg", STATS),
    "secagg": _study(secure="secagg"),
    "secagg_plus_stats": _study(secure="secagg+", data={"standardize": True}),
    "dp_sgd": _study({"mode": "dp_sgd", "clip": 1.0, "noise_multiplier": 1.1}),
    "ckks": _study(secure="ckks"),
    "dp_fedavg_distributed_ckks": _study({"mode": "dp_fedavg_distributed", "clip": 0.05,
                                          "noise_multiplier": 0.7}, "ckks"),
}
#: Studies whose model differs run to run on main already (Opacus' noise; CKKS' encryption
#: noise on the unrounded DP grid values): only their history's privacy facts are pinned.
UNSEEDED = {"dp_sgd", "dp_fedavg_distributed_ckks"}


class _CountingUrandom:
    """``os`` for :mod:`fedcare.privacy.dp.discrete_gaussian` with a deterministic
    ``urandom``: the DP noise (always drawn from a fresh ChaCha20 key) repeats run to run, so
    two runs of one study give one model as long as the noise is drawn in the same order."""

    def __init__(self) -> None:
        self.n = 0

    def urandom(self, k: int) -> bytes:
        self.n += 1
        out = b""
        while len(out) < k:
            out += hashlib.sha256(f"pin|{self.n}|{len(out)}".encode()).digest()
        return out[:k]


@pytest.fixture(autouse=True)
def _repeatable_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedcare.privacy.dp import discrete_gaussian

    monkeypatch.setattr(discrete_gaussian, "os", _CountingUrandom())


def _digest(cfg: dict[str, Any]) -> tuple[str, str]:
    """SHA-256 of the final model's bytes, and of the history's numbers that privacy and
    secure aggregation produce (epsilon report, per-round metrics and who took part)."""
    h = fedcare.simulate(cfg, force=True)
    model = hashlib.sha256()
    for name, arr in sorted(h.final_parameters.items()):
        model.update(name.encode() + np.ascontiguousarray(arr).tobytes())
    d = h.to_dict()
    rounds = [{k: r[k] for k in ("round", "sites_completed", "sites_failed", "epsilon")
               if k in r} | {"train_metrics": {s: {k: v for k, v in m.items() if k != "seconds"}
                                               for s, m in r["train_metrics"].items()}}
              for r in d["rounds"]]
    facts = json.dumps({"privacy": d.get("privacy"), "rounds": rounds}, sort_keys=True,
                       default=str)
    return model.hexdigest(), hashlib.sha256(facts.encode()).hexdigest()


PINNED: dict[str, tuple[str, str]] = {
    "ckks": (
        "f386a444397ea028582186bbf3c892b818240a93541069ade42704572c811122",
        "6ab5dab1516b6e1876892520d36c4b295ce00db161e02732c56718cb3bc0b822"),
    "dp_fedavg_central": (
        "5670c7cd638d5f1d55e2b5622fca3dcd021173b3ba3d7c58a9f1f0e3d4810cd5",
        "8dfd9079a859d6251eee11ea211c427b68902c9798fcb1b607429fc6230005cb"),
    "dp_fedavg_central_secagg_stats": (
        "6fa3916d265f5536d0f09ce84e5f8b68304cb6ffd33d7cf9d4b1e77738e32899",
        "bb0a76f4f11455cbf95f3ca28b9c51fea0af53ca4142db3397179a704fb6a6f6"),
    "dp_fedavg_distributed_ckks": (
        "211b539978409a68f9f21b5b66d9741080073f3c8f4834825c28930b80f52039",
        "e754b338d0f6278afad5732b317250930a16e05b99a5273a97d9fd0d538703a8"),
    "dp_fedavg_distributed_secagg": (
        "b95fdec0a574863cecbff85840421f7f94d734cb7d4f920cb78ce96d9aaa1217",
        "e754b338d0f6278afad5732b317250930a16e05b99a5273a97d9fd0d538703a8"),
    "dp_sgd": (
        "89d925107302b35cd25aad33e5c98520703693175335a317e471f46540ad9b0c",
        "8881ebcc1bacb5ed066f1f783bfc3a01c36fc6086d45eace617ec0aae92bcf0e"),
    "plain": (
        "38aa834510856163158c15ac5214720738fd477b498c999df98903d0a0558a6e",
        "9dc29a96c58384897477e16ff0e923076a4551478e2b2e43931f492230b2c909"),
    "plain_stats": (
        "795cb695f68a7047bcc81b873de88005ed00cea0497124ae70616478e2d3f51a",
        "9e7a6ad131f429faf3c0fbffe3b6a71c9184a16dfc5f33b50041271be8bc4d9f"),
    "secagg": (
        "626df64de893ade5c7e81ba8df2f429c2127cdd3b67511213b260f6ceea3826d",
        "6ab5dab1516b6e1876892520d36c4b295ce00db161e02732c56718cb3bc0b822"),
    "secagg_plus_stats": (
        "3d7d9572359ce334a61c64fe26c989199b92e5431732742a19bc0b8c3b4fec40",
        "aedeeb6986549135364674323a6e00cb06d85ebbb32197b8b68034f956f4ae8d"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_composed_steps_give_the_models_main_gave(case: str) -> None:
    model, facts = _digest(CASES[case])
    assert facts == PINNED[case][1]
    if case not in UNSEEDED:
        assert model == PINNED[case][0]


SITE_CASES: dict[str, dict[str, Any]] = {
    "none": {"mode": "none"},
    "dp_fedavg_central": {"mode": "dp_fedavg_central", "clip": 0.05, "noise_multiplier": 0.7},
    "dp_fedavg_distributed": {"mode": "dp_fedavg_distributed", "clip": 0.05,
                              "noise_multiplier": 0.7},
    "dp_sgd": {"mode": "dp_sgd", "clip": 1.0, "noise_multiplier": 1.1},
}


def _site_digest(tmp_path: Any, privacy: dict[str, Any]) -> str:
    """One site's answer to one fit task under a ledger: the reply's bytes (its wall-clock
    seconds zeroed) and the ledger's charge, as one SHA-256."""
    from dataclasses import replace

    from fedcare.config import parse_config
    from fedcare.core.messages import Task, TaskKind
    from fedcare.core.wire import decode_update, encode_update
    from fedcare.engine.privacy import DP_SITES, site_privacy
    from fedcare.privacy.dp.ledger import PrivacyLedger, SitePrivacyPolicy
    from fedcare.sim.runner import _Run
    from tests.unit.helpers import ledger_key

    distributed = privacy["mode"] == "dp_fedavg_distributed"
    cfg = parse_config(_study(privacy, "secagg" if distributed else None))
    run = _Run(cfg, None, None, False, False)
    run.prepare()
    site = run.sites[0]
    ledger = PrivacyLedger(tmp_path / f"{privacy['mode']}.jsonl",
                           SitePrivacyPolicy(1e6, 1e-5, trust_hub_noise=True), key=ledger_key())
    from fedcare.engine.learner_factory import make_learner

    # DP-SGD derives each site's noise from its rows: one learner per site then.
    learner = (make_learner(cfg, run.shape, rows=len(site.y_train))
               if cfg.privacy.mode == "dp_sgd" else run.learner)
    from fedcare.engine.executor import SiteExecutor
    from fedcare.engine.secure import SecureSettings, SecureSite

    names = [s.name for s in run.sites]
    settings = SecureSettings.of(cfg)
    ex = SiteExecutor(site, learner, site_index=0, expected=run.spec,
                      privacy=site_privacy(cfg, len(site.y_train), 3, ledger),
                      secure=SecureSite(site.name, settings, names) if settings else None)
    meta: dict[str, Any] = {DP_SITES: 3} if privacy["mode"].startswith("dp_fedavg") else {}
    if settings is not None:
        meta.update(settings.meta(names))
    task = Task(task_id="pin/r1/fit/" + site.name, study="pin", round=1, site=site.name,
                kind=TaskKind.FIT, parameters=run.initial, train=run.train, aux={}, seed=5,
                evaluate=True, strategy="fedavg", meta=meta)
    update = ex.run(task)
    h = hashlib.sha256()
    if ex.secure is not None:  # the reply holds fresh keys: pin what entered the protocol
        entered = ex.secure.entered(1)
        assert entered is not None
        h.update(entered.tobytes())
        h.update(json.dumps([dict(update.metrics), update.num_examples,
                             dict(update.eval_metrics)], sort_keys=True).encode())
    elif privacy["mode"] != "dp_sgd":  # Opacus' noise differs run to run
        # (provenance grew one entry per filter; everything else is byte for byte)
        body = encode_update(replace(update, seconds=0.0, provenance=()))
        decode_update(body, run.spec, {})  # still a valid reply
        h.update(body)
    else:
        h.update(json.dumps(sorted(update.metrics)).encode())
    for e in ledger.entries():
        h.update(json.dumps({k: v for k, v in e.to_json().items() if k != "time"},
                            sort_keys=True).encode())
    return h.hexdigest()


SITE_PINNED: dict[str, str] = {
    "dp_fedavg_central":
        "c1c6252ae976ebb0f8ce517c320073f6eb97610d5e0a0bd564a09b85f83cc088",
    "dp_fedavg_distributed":
        "4e9633e1ed77c8630d14f4e79093a33d392480e6ba2b7a855897f849324e5e82",
    "dp_sgd":
        "c7ca2a41bb8b5e2286e851d7384e02ff556040d7228ea37766b608b7ec43381b",
    "none":
        "7ac042bb0a4f85b58e3dde297ef0fb724e9ef100d4a13bac42d51406a71e6924",
}


@pytest.mark.parametrize("case", sorted(SITE_CASES))
def test_a_site_replies_and_charges_as_it_did(case: str, tmp_path: Any) -> None:
    assert _site_digest(tmp_path, SITE_CASES[case]) == SITE_PINNED[case]
