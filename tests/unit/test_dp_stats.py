"""DP feature statistics (audit F6 / F7): bounded sensitivity, noise calibrated with
``dp-accounting`` to ``privacy.stats_epsilon``, the charge in the site's ledger (accepted by a
site that requires DP), the hub's epsilon that composes it, the std floor, and the simulation
running the same noised stats tasks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fedcare
from fedcare.config import parse_config
from fedcare.core.dataset import TaskType
from fedcare.core.errors import ConfigError
from fedcare.core.messages import Task, TaskKind
from fedcare.core.params import Parameters
from fedcare.core.wire import decode_reply, encode_task
from fedcare.data.standardize import (
    DP_STD_FLOOR,
    STATS_FRAC_BITS,
    bounded_grid_sums,
    bounded_sensitivity,
    bounded_sums,
    federated_standardizer,
    pool_bounded,
)
from fedcare.engine.executor import MIN_STATS_ROWS, STATS, SiteExecutor, pool_stats
from fedcare.engine.privacy import (
    HubPrivacy,
    SitePrivacy,
    site_privacy,
    stats_noise_multiplier,
    stats_noise_std,
)
from fedcare.learners.torch_learner import TorchLearner
from fedcare.privacy.dp.accounting import epsilon, epsilon_of, sampled_gaussian_event
from fedcare.privacy.dp.ledger import PrivacyLedger, SitePrivacyPolicy
from tests.unit.helpers import ledger_key, make_sites

LOW, HIGH = np.array([-2.0, 0.0, 10.0]), np.array([2.0, 1.0, 20.0])
DP = {"mode": "dp_fedavg_central", "clip": 1.0, "noise_multiplier": 1.0}
CFG = {"study": {"name": "dps", "rounds": 2, "seed": 1},
       "data": {"source": "builtin", "sites": 3, "partition": "iid",
                "stats_clip": [0, 4300]},
       "model": {"name": "logreg"}, "train": {"lr": 0.2, "batch_size": 32},
       "baselines": {"local": False, "centralized": False}, "privacy": DP}

rows = hnp.arrays(np.float64, st.tuples(st.integers(1, 20), st.just(3)),
                  elements=st.floats(-1e6, 1e6))


@given(rows, hnp.arrays(np.float64, 3, elements=st.floats(-1e6, 1e6)))
def test_one_row_moves_count_sums_and_squares_by_at_most_the_sensitivity(
        x: np.ndarray, extra: np.ndarray) -> None:
    n0, s0, q0 = bounded_sums(x, LOW, HIGH)
    n1, s1, q1 = bounded_sums(np.vstack([x, extra]), LOW, HIGH)
    change = np.concatenate([[n1 - n0], s1 - s0, q1 - q0])
    assert np.linalg.norm(change) <= bounded_sensitivity(3) * (1 + 1e-12)


@given(rows, hnp.arrays(np.float64, 3, elements=st.floats(-1e6, 1e6)))
def test_on_the_grid_one_row_moves_the_sums_by_at_most_the_sensitivity_exactly(
        x: np.ndarray, extra: np.ndarray) -> None:
    """The noise is added in integer grid steps: the bound holds there, with no rounding."""
    k0 = bounded_grid_sums(x, LOW, HIGH)
    k1 = bounded_grid_sums(np.vstack([x, extra]), LOW, HIGH)
    change = [int(v) for v in k1 - k0]
    assert sum(c * c for c in change) <= (2**STATS_FRAC_BITS) ** 2 * 7  # (2^f)^2 (1 + 2d)


def test_the_charged_multiplier_is_the_discrete_accountants() -> None:
    """Discrete Gaussian shares this wide: the accountant's figure for their sum is z."""
    from fedcare.privacy.dp.accounting import discrete_noise_multiplier

    for z, d, in_sum in ((3.75, 8, 1), (3.75, 8, 3), (0.2, 1, 1000), (9.0, 30, 7)):
        assert discrete_noise_multiplier(z, bounded_sensitivity(d), STATS_FRAC_BITS,
                                         shares=in_sum, summed=in_sum,
                                         dim=1 + 2 * d) == z


def test_the_sensitivity_is_reached_at_the_range_ends() -> None:
    x = np.zeros((0, 3))
    _, s, q = bounded_sums(np.vstack([x, HIGH + 5]), LOW, HIGH)  # beyond the range: clipped
    assert np.linalg.norm(np.concatenate([[1], s, q])) == pytest.approx(math.sqrt(7))


def test_the_noise_meets_stats_epsilon_with_dp_accounting() -> None:
    for eps in (0.3, 1.0, 4.0):
        cfg = parse_config({**CFG, "privacy": {**DP, "stats_epsilon": eps}})
        z = stats_noise_multiplier(cfg)
        assert z is not None
        assert epsilon(z, 1.0, 1, 1e-5) <= eps
        assert epsilon(z * 0.97, 1.0, 1, 1e-5) > eps * 0.99  # and is not needlessly large
    assert stats_noise_multiplier(parse_config({**CFG, "privacy": {"mode": "none"}})) is None
    no_std = {**CFG, "data": {**CFG["data"], "standardize": False}}
    assert stats_noise_multiplier(parse_config(no_std)) is None


def test_a_dp_study_that_standardizes_must_declare_ranges() -> None:
    with pytest.raises(ConfigError, match="stats_clip"):
        parse_config({**CFG, "data": {"source": "builtin"}})
    fed = {"source": "federation", "dataset": "d", "label": "y", "features": ["a", "b"],
           "stats_clip": {"a": [0, 1]}}
    with pytest.raises(ConfigError, match=r"missing \['b'\]"):
        parse_config({"data": fed, "privacy": DP})


@pytest.mark.parametrize("in_sum", [1, 4])
def test_the_sites_noise_has_the_stated_std(in_sum: int) -> None:
    site = make_sites(n_sites=1, rows=50, features=8)[0]
    p = SitePrivacy(None, None, 50, stats_noise=2.0, stats_clip=[-3.0, 3.0])
    n, s, q = bounded_sums(site.x_train, np.full(8, -3.0), np.full(8, 3.0))
    exact = np.concatenate([[n], s, q])
    draws = np.stack([np.concatenate([[c], a, b]) for c, a, b in (
        p.noised_stats(site.x_train, site.feature_names, in_sum) for _ in range(400))])
    noise = draws - exact
    expected = 2.0 * math.sqrt(17) / math.sqrt(in_sum)
    assert stats_noise_std(2.0, 8, in_sum) == pytest.approx(expected)
    assert noise.std() == pytest.approx(expected, rel=0.05)  # 6800 draws: SE about 1 %
    assert abs(noise.mean()) < 0.1 * expected


def _executor(tmp_path: Path, cfg: dict, *, rows: int = 40, require_dp: bool = True
              ) -> tuple[SiteExecutor, PrivacyLedger, Task]:
    site = make_sites(n_sites=1, rows=rows, features=5)[0]
    policy = SitePrivacyPolicy(max_epsilon=8.0, delta=1e-5, require_dp=require_dp)
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl", policy, key=ledger_key())
    learner = TorchLearner.from_zoo("logreg", (5,), 1, TaskType.BINARY, {}, seed=0)
    parsed = parse_config({**cfg, "data": {**cfg["data"], "stats_clip": [-4, 4]}})
    ex = SiteExecutor(site, learner, site_index=0, expected=learner.initial_parameters().spec,
                      privacy=site_privacy(parsed, rows, 3, ledger))
    task = Task("dps/r0/stats/site-1", "dps", 0, "site-1", TaskKind.STATS,
                learner.initial_parameters())
    return ex, ledger, task


def test_a_site_requiring_dp_answers_noised_stats_and_charges_them(tmp_path: Path) -> None:
    ex, ledger, task = _executor(tmp_path, CFG)
    reply = decode_reply(ex.handle(encode_task(task)), Parameters({}).spec, {STATS: None})
    assert not hasattr(reply, "error_type"), reply
    assert reply.num_examples == 0  # no exact row count leaves the site
    assert "dp:gaussian" in reply.provenance
    n, s, _ = bounded_sums(ex.data.x_train, np.full(5, -4.0), np.full(5, 4.0))
    assert reply.aux[STATS]["count"][0] != n and not np.allclose(reply.aux[STATS]["sum"], s)
    [entry] = ledger.entries()
    z = stats_noise_multiplier(parse_config(CFG))
    assert (entry.task_id, entry.mechanism.value, entry.noise_multiplier, entry.sample_rate,
            entry.steps) == (task.task_id, "dp_fedavg_central", z, 1.0, 1)
    assert ledger.spent().epsilon == pytest.approx(epsilon(z, 1.0, 1, 1e-5), rel=1e-6)
    assert ledger.spent().epsilon <= 1.0  # privacy.stats_epsilon's default


def test_refusals_charge_nothing(tmp_path: Path) -> None:
    # fewer rows than the small-cell rule allows
    ex, ledger, task = _executor(tmp_path / "a", CFG, rows=MIN_STATS_ROWS - 1)
    reply = decode_reply(ex.handle(encode_task(task)), Parameters({}).spec)
    assert "fewer than" in reply.message and ledger.entries() == []
    # a DP study that does not standardize: the hub has no business asking for statistics
    no_std = {**CFG, "data": {**CFG["data"], "standardize": False}}
    ex, ledger, task = _executor(tmp_path / "b", no_std)
    reply = decode_reply(ex.handle(encode_task(task)), Parameters({}).spec)
    assert "releases no feature statistics" in reply.message and ledger.entries() == []
    # a plain study at a site that requires DP is still refused (F7 is about DP studies)
    ex, ledger, task = _executor(tmp_path / "c", {**CFG, "privacy": {"mode": "none"}})
    reply = decode_reply(ex.handle(encode_task(task)), Parameters({}).spec)
    assert "requires DP" in reply.message and ledger.entries() == []


def test_noisy_moments_are_clamped_and_the_std_floored() -> None:
    low, high = np.array([0.0, 10.0, -1.0]), np.array([100.0, 20.0, 1.0])
    # the noise made E[u^2] < E[u]^2 (feature 0), E[u] beyond the range (feature 1)
    mean, std = pool_bounded(50.0, np.array([10.0, 80.0, 0.0]), np.array([-3.0, 70.0, 49.0]),
                             low, high)
    assert np.isfinite(std).all() and (std > 0).all()
    assert std[0] == pytest.approx(DP_STD_FLOOR * 50.0)
    assert mean[1] == pytest.approx(20.0) and std[1] == pytest.approx(DP_STD_FLOOR * 5.0)
    assert std[2] <= 1.0 + 1e-6  # never above the half-width
    # a count the noise drove to zero or below is floored, nothing divides by it
    mean, std = pool_bounded(-7.0, np.zeros(3), np.zeros(3), low, high)
    np.testing.assert_allclose(mean, (low + high) / 2)
    assert (std > 0).all()


def test_without_noise_bounded_pooling_recovers_the_exact_normalizer() -> None:
    sites = make_sites(n_sites=3, rows=40, features=5)
    low, high = np.full(5, -10.0), np.full(5, 10.0)
    replies = []
    for s in sites:
        n, t, q = bounded_sums(s.x_train, low, high)
        replies.append(Parameters({"sum": t, "sumsq": q, "count": np.array([float(n)])}))
    norm = pool_stats(replies, (low, high))
    mean, std = federated_standardizer([s.x_train for s in sites])
    np.testing.assert_allclose(norm["mean"], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(norm["std"], std, rtol=1e-4)


def test_the_hubs_epsilon_composes_the_stats_release() -> None:
    from fedcare.privacy.dp.spec import PrivacySpec

    class _Round:
        def __init__(self, r: int) -> None:
            self.round, self.sites_sampled, self.sites_completed = r, ["a", "b"], ["a", "b"]

    spec = PrivacySpec("dp_fedavg_central", clip=1.0, noise_multiplier=1.0)
    report = HubPrivacy(spec, 2, stats_noise=3.0).report([_Round(1), _Round(2)])
    both = epsilon_of([sampled_gaussian_event(3.0, 1.0, 1), sampled_gaussian_event(1.0, 1.0, 2)],
                      1e-5)
    assert report["epsilon"] == pytest.approx(both, rel=1e-9)
    assert [r["round"] for r in report["rounds"]] == [0, 1, 2]
    assert report["stats"]["epsilon"] == pytest.approx(epsilon(3.0, 1.0, 1, 1e-5))
    plain = HubPrivacy(spec, 2).report([_Round(1), _Round(2)])
    assert plain["epsilon"] < report["epsilon"] and "stats" not in plain


@pytest.mark.parametrize("secure", ["none", "secagg"])
def test_a_dp_simulation_standardizes_with_noised_stats(secure: str) -> None:
    """Same code path as the hub: stats tasks, noise, and the charge in the epsilon."""
    cfg = {**CFG, "secure_aggregation": {"protocol": secure}}
    if secure != "none":
        cfg["privacy"] = {"mode": "dp_fedavg_distributed", "clip": 1.0, "noise_multiplier": 1.0}
    # force: this checks the statistics path, not whether this small study can learn
    runs = [fedcare.simulate(cfg, force=True) for _ in range(2)]
    norms = [np.asarray(h.meta["normalizer"]["mean"]) for h in runs]
    assert not np.allclose(norms[0], norms[1])  # fresh noise each run
    from fedcare.sim.sites import build_sites

    parsed = parse_config(cfg)
    raw = build_sites(parsed.data.model_copy(update={"standardize": False}), 1)
    exact, _ = federated_standardizer([s.x_train for s in raw])
    assert not np.allclose(norms[0], exact, rtol=1e-3)
    z = stats_noise_multiplier(parsed)
    assert runs[0].meta["privacy"]["stats"]["noise_multiplier"] == z
    assert runs[0].meta["privacy"]["rounds"][0]["round"] == 0
    assert all(np.isfinite(r.final_parameters.flatten("float64")).all() for r in runs)
