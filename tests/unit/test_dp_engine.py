"""Differential privacy in the round loop (simulation): DP-FedAvg's arithmetic, the epsilon the
history reports, DP-SGD's per-site accounting, and the site ledger refusing past its budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import fedcare
from fedcare.config import parse_config
from fedcare.core.messages import TaskKind
from fedcare.engine.executor import SiteExecutor
from fedcare.engine.history import History
from fedcare.engine.privacy import SitePrivacy
from fedcare.engine.round_engine import EngineSettings, RoundEngine
from fedcare.privacy.dp.accounting import epsilon
from fedcare.privacy.dp.ledger import PrivacyLedger, SitePrivacyPolicy
from fedcare.privacy.dp.spec import PrivacySpec
from fedcare.sim.runner import _Run
from fedcare.strategies import FedAvg
from fedcare.transport.inmemory import InMemoryTransport
from tests.unit.helpers import ledger_key

BASE = {"study": {"name": "dp", "rounds": 3, "seed": 2},
        "data": {"source": "builtin", "sites": 4, "partition": "iid"},
        "model": {"name": "logreg"}, "train": {"lr": 0.2, "batch_size": 32},
        "baselines": {"local": False, "centralized": False}}


def _plain_round_one(cfg: dict) -> tuple[dict, object]:
    """Each site's round-1 trained model, computed the plain way."""
    parsed = parse_config({**cfg, "privacy": {"mode": "none"}})
    run = _Run(parsed, None, None, False, False)
    run.prepare()
    ex = run._executors(run.sites)
    eng = RoundEngine(EngineSettings(study="x", seed=parsed.study.seed, train=run.train),
                      FedAvg(), InMemoryTransport({n: e.handle for n, e in ex.items()}),
                      [s.name for s in run.sites], run.initial, History(study="x"))
    got = eng.exchange(1, eng.sites, TaskKind.FIT, evaluate=False, train=run.train, aux={})
    return {s: u.parameters.flatten("float64") for s, u in got.updates.items()}, run.initial


def test_dp_fedavg_without_noise_is_the_uniform_mean_of_clipped_differences() -> None:
    clip = 0.05
    cfg = {**BASE, "study": {**BASE["study"], "rounds": 1},
           "privacy": {"mode": "dp_fedavg_central", "clip": clip, "noise_multiplier": 0.0}}
    trained, initial = _plain_round_one(cfg)
    g = initial.flatten("float64")
    clipped = []
    for x in trained.values():
        d = x - g
        clipped.append(d * min(1.0, clip / np.linalg.norm(d)))
    expected = g + np.mean(clipped, axis=0)
    h = fedcare.simulate(cfg)
    got = np.concatenate([np.asarray(v, np.float64).ravel()
                          for v in h.final_parameters.values()])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert np.linalg.norm(got - g) <= clip + 1e-6


def test_central_noise_moves_the_model_by_the_stated_amount() -> None:
    z, clip = 2.0, 0.05
    cfg = {**BASE, "study": {**BASE["study"], "rounds": 1},
           "privacy": {"mode": "dp_fedavg_central", "clip": clip, "noise_multiplier": z}}
    quiet = {**cfg, "privacy": {**cfg["privacy"], "noise_multiplier": 0.0}}
    a = fedcare.simulate(cfg, force=True).final_parameters
    b = fedcare.simulate(quiet).final_parameters
    diff = np.concatenate([(np.asarray(a[k], np.float64) - b[k]).ravel() for k in b])
    # noise on the sum is N(0, (z*C)^2) per coordinate, divided by the 4 sites
    std = diff.std()
    assert 0.5 * z * clip / 4 < std < 1.6 * z * clip / 4, std


def test_history_epsilon_matches_the_accountant() -> None:
    z = 1.3
    cfg = {**BASE, "privacy": {"mode": "dp_fedavg_central", "clip": 1.0,
                               "noise_multiplier": z, "delta": 1e-5}}
    h = fedcare.simulate(cfg, force=True).to_dict()
    assert h["privacy"]["epsilon"] == pytest.approx(epsilon(z, 1.0, 3, 1e-5), rel=1e-9)
    eps = [r["epsilon_cumulative"] for r in h["privacy"]["rounds"]]
    assert eps == sorted(eps) and len(eps) == 3


def test_dp_sgd_reports_epsilon_per_site_and_budget_first_meets_the_target() -> None:
    cfg = {**BASE, "privacy": {"mode": "dp_sgd", "clip": 1.0, "target_epsilon": 2.0}}
    h = fedcare.simulate(cfg).to_dict()
    sites = h["privacy"]["sites"]
    assert set(sites) == {"site-1", "site-2", "site-3", "site-4"}
    for s in sites.values():
        assert 1.5 < s["epsilon"] <= 2.0 + 1e-9
    assert h["privacy"]["epsilon"] == max(s["epsilon"] for s in sites.values())


def test_a_site_refuses_a_task_past_its_budget_and_its_ledger_is_unchanged(tmp_path: Path
                                                                           ) -> None:
    cfg = {**BASE, "study": {**BASE["study"], "rounds": 2},
           "privacy": {"mode": "dp_fedavg_central", "clip": 1.0, "noise_multiplier": 1.0}}
    parsed = parse_config(cfg)
    run = _Run(parsed, None, None, False, False)
    run.prepare()
    site = run.sites[0]
    # one DP-FedAvg round at z=1 costs ~4.4 epsilon at delta 1e-5: allow one round only
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl",
                           SitePrivacyPolicy(6.0, 1e-5, trust_hub_noise=True), key=ledger_key())
    spec = PrivacySpec("dp_fedavg_central", clip=1.0, noise_multiplier=1.0, delta=1e-5)
    ex = SiteExecutor(site, run.learner, site_index=0, expected=run.spec,
                      privacy=SitePrivacy(spec, ledger, len(site.y_train)))
    eng = RoundEngine(EngineSettings(study="b", seed=0, train=run.train), FedAvg(),
                      InMemoryTransport({site.name: ex.handle}), [site.name], run.initial,
                      History(study="b"))
    meta = {"dp_sites": 1}
    first = eng.exchange(1, [site.name], TaskKind.FIT, evaluate=False, train=run.train,
                         aux={}, meta=meta)
    assert site.name in first.updates
    spent = ledger.spent().epsilon
    second = eng.exchange(2, [site.name], TaskKind.FIT, evaluate=False, train=run.train,
                          aux={}, meta=meta)
    assert "PrivacyBudgetError" in second.failures[site.name]
    assert "limit" in second.failures[site.name]
    assert ledger.spent().epsilon == spent and len(ledger.entries()) == 1
    assert ledger.verify() == []


def test_a_site_that_requires_dp_refuses_a_plain_study(tmp_path: Path) -> None:
    parsed = parse_config(BASE)
    run = _Run(parsed, None, None, False, False)
    run.prepare()
    site = run.sites[0]
    ledger = PrivacyLedger(tmp_path / "l.jsonl", SitePrivacyPolicy(8.0, 1e-5, require_dp=True),
                           key=ledger_key())
    ex = SiteExecutor(site, run.learner, site_index=0, expected=run.spec,
                      privacy=SitePrivacy(None, ledger, len(site.y_train)))
    eng = RoundEngine(EngineSettings(study="p", seed=0, train=run.train), FedAvg(),
                      InMemoryTransport({site.name: ex.handle}), [site.name], run.initial,
                      History(study="p"))
    got = eng.exchange(1, [site.name], TaskKind.FIT, evaluate=False, train=run.train, aux={})
    assert site.name in got.failures and "DP" in got.failures[site.name]
    assert ledger.entries() == []


def test_dp_fedavg_site_sends_a_clipped_delta_never_its_model() -> None:
    cfg = {**BASE, "privacy": {"mode": "dp_fedavg_central", "clip": 0.01,
                               "noise_multiplier": 1.0}}
    parsed = parse_config(cfg)
    run = _Run(parsed, None, None, False, False)
    run.prepare()
    ex = run._executors(run.sites)
    eng = RoundEngine(EngineSettings(study="c", seed=0, train=run.train), FedAvg(),
                      InMemoryTransport({n: e.handle for n, e in ex.items()}),
                      [s.name for s in run.sites], run.initial, History(study="c"))
    got = eng.exchange(1, eng.sites, TaskKind.FIT, evaluate=False, train=run.train, aux={},
                       meta={"dp_sites": 4})
    for u in got.updates.values():
        assert u.kind.value == "delta" and "dp:dp_fedavg_central" in u.provenance
        assert np.linalg.norm(u.parameters.flatten("float64")) <= 0.01 + 1e-7
    missing = eng.exchange(1, eng.sites, TaskKind.FIT, evaluate=False, train=run.train,
                           aux={})
    assert all("how many sites" in m for m in missing.failures.values())


def _dp_site(tmp_path: Path, mode: str, **policy: object):
    run = _Run(parse_config(BASE), None, None, False, False)
    run.prepare()
    site = run.sites[0]
    ledger = PrivacyLedger(tmp_path / "l.jsonl", SitePrivacyPolicy(50.0, 1e-5, **policy),
                           key=ledger_key())
    spec = PrivacySpec(mode, clip=1.0, noise_multiplier=1.0, delta=1e-5)
    ex = SiteExecutor(site, run.learner, site_index=0, expected=run.spec,
                      privacy=SitePrivacy(spec, ledger, len(site.y_train), study_sites=4,
                                          secure_threshold=0.75))
    eng = RoundEngine(EngineSettings(study="b", seed=0, train=run.train), FedAvg(),
                      InMemoryTransport({site.name: ex.handle}), [site.name], run.initial,
                      History(study="b"))
    return site, ledger, eng, run


def test_central_noise_is_refused_by_a_site_that_does_not_trust_the_hub(tmp_path: Path) -> None:
    site, ledger, eng, run = _dp_site(tmp_path, "dp_fedavg_central")
    got = eng.exchange(1, [site.name], TaskKind.FIT, evaluate=False, train=run.train, aux={},
                       meta={"dp_sites": 1})
    assert "trust_hub_noise" in got.failures[site.name] and ledger.entries() == []


def test_a_hub_cannot_shrink_a_sites_noise_share_by_inflating_the_round(tmp_path: Path) -> None:
    site, ledger, eng, run = _dp_site(tmp_path, "dp_fedavg_distributed")
    for meta in ({"dp_sites": 10**6, "participants": [site.name]},   # more than the study
                 {"dp_sites": 3, "participants": [site.name]}):      # not the participants
        got = eng.exchange(1, [site.name], TaskKind.FIT, evaluate=False, train=run.train,
                           aux={}, meta=meta)
        assert "ProtocolError" in got.failures[site.name]
    assert ledger.entries() == []  # refused before anything was charged


def test_distributed_noise_is_charged_at_the_share_the_threshold_guarantees(tmp_path: Path
                                                                              ) -> None:
    from fedcare.core.messages import Task, TrainConfig
    from fedcare.core.params import Parameters

    ledger = PrivacyLedger(tmp_path / "l.jsonl", SitePrivacyPolicy(50.0, 1e-5), key=ledger_key())
    spec = PrivacySpec("dp_fedavg_distributed", clip=1.0, noise_multiplier=2.0, delta=1e-5)
    sp = SitePrivacy(spec, ledger, 100, study_sites=4, secure_threshold=0.75)
    task = Task(task_id="s/r1/fit/a", study="s", round=1, site="a", kind=TaskKind.FIT,
                parameters=Parameters({}),
                meta={"dp_sites": 4, "participants": ["a", "b", "c", "d"]})
    sp.check(task)
    sp.charge(task, TrainConfig())
    # t = ceil(0.75 * 4) = 3 survivors carry 3/4 of the noise variance
    assert ledger.entries()[0].noise_multiplier == pytest.approx(2.0 * (3 / 4) ** 0.5)
