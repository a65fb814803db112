"""Accounting against dp-accounting's own reference computation; budget-first noise."""

from __future__ import annotations

import math

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from fedcare.core.errors import ConfigError
from fedcare.privacy.dp import PrivacyBudgetError, PrivacySpec, epsilon, noise_for_budget
from fedcare.privacy.dp.accounting import (
    MAX_NOISE,
    PLD_DISCRETIZATION,
    discrete_noise_multiplier,
)
from fedcare.privacy.dp.report import epsilon_history, fedavg_charges

DELTA = 1e-5


def _reference(z: float, q: float, steps: int, accountant: str) -> float:
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), steps)
    acc = (pld.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
           if accountant == "pld" else rdp.RdpAccountant())
    acc.compose(event)
    return float(acc.get_epsilon(DELTA))


@pytest.mark.parametrize(("z", "q", "steps"), [(1.0, 32 / 455, 300), (1.1, 1.0, 20),
                                               (2.0, 0.25, 50)])
@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_epsilon_equals_the_reference_computation(z: float, q: float, steps: int,
                                                   accountant: str) -> None:
    assert epsilon(z, q, steps, DELTA, accountant) == pytest.approx(
        _reference(z, q, steps, accountant), rel=1e-12)


def test_rdp_is_never_tighter_than_pld() -> None:
    for z, q, steps in [(1.0, 32 / 455, 300), (1.1, 1.0, 20), (0.8, 0.5, 10)]:
        assert epsilon(z, q, steps, DELTA, "rdp") >= epsilon(z, q, steps, DELTA, "pld")


def test_more_noise_fewer_steps_smaller_rate_less_epsilon() -> None:
    base = epsilon(1.0, 0.1, 100, DELTA)
    assert epsilon(2.0, 0.1, 100, DELTA) < base
    assert epsilon(1.0, 0.1, 50, DELTA) < base
    assert epsilon(1.0, 0.05, 100, DELTA) < base


def test_edge_cases_no_steps_and_no_noise() -> None:
    assert epsilon(1.0, 0.5, 0, DELTA) == 0.0
    assert epsilon(0.0, 0.5, 3, DELTA) == math.inf


@pytest.mark.parametrize(("args", "key"), [
    ((-1.0, 0.5, 3, DELTA), "noise_multiplier"), ((float("nan"), 0.5, 3, DELTA),
                                                  "noise_multiplier"),
    ((1.0, 0.0, 3, DELTA), "sample_rate"), ((1.0, 1.5, 3, DELTA), "sample_rate"),
    ((1.0, 0.5, -1, DELTA), "steps"), ((1.0, 0.5, 2.5, DELTA), "steps"),
    ((1.0, 0.5, 3, 0.0), "delta"), ((1.0, 0.5, 3, 1.0), "delta"),
])
def test_bad_inputs_name_the_parameter(args: tuple, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        epsilon(*args)


def test_unknown_accountant_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="pld, rdp"):
        epsilon(1.0, 0.5, 3, DELTA, "moments")


@pytest.mark.parametrize(("accountant", "q"), [("rdp", 1.0), ("pld", 0.25)])
def test_noise_for_budget_meets_the_target_tightly(accountant: str, q: float) -> None:
    z = noise_for_budget(3.0, DELTA, q, 20, accountant)
    reached = epsilon(z, q, 20, DELTA, accountant)
    assert reached <= 3.0
    assert reached >= 3.0 * 0.98  # tolerance 1 %: not wastefully noisy


def test_noise_for_budget_refuses_an_impossible_budget_saying_what_to_change() -> None:
    with pytest.raises(PrivacyBudgetError, match=r"cannot be met.*raise target_epsilon") as info:
        noise_for_budget(1e-4, 1e-12, 1.0, 100_000, "rdp")
    assert f"{MAX_NOISE:g}" in str(info.value)


def test_noise_for_budget_validates_its_inputs() -> None:
    with pytest.raises(ConfigError, match="target_epsilon"):
        noise_for_budget(0.0, DELTA, 0.5, 10)
    with pytest.raises(ConfigError, match="delta"):
        noise_for_budget(1.0, 2.0, 0.5, 10)
    assert noise_for_budget(1.0, DELTA, 0.5, 0) == 0.0


def test_epsilon_history_is_cumulative_and_matches_one_composition() -> None:
    spec = PrivacySpec("dp_fedavg_central", clip=1.0, noise_multiplier=1.0, accountant="rdp")
    report = epsilon_history(spec, fedavg_charges([4, 4, 2, 4], 4))
    eps = [r.epsilon_cumulative for r in report.rounds]
    assert eps == sorted(eps) and eps[0] == pytest.approx(report.rounds[0].epsilon_round)
    assert report.rounds[2].sample_rate == 0.5
    assert report.rounds[1].epsilon_cumulative == pytest.approx(
        epsilon(1.0, 1.0, 2, DELTA, "rdp"))
    reference = rdp.RdpAccountant()
    for q in (1.0, 1.0, 0.5, 1.0):
        reference.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(1)))
    assert report.epsilon == pytest.approx(reference.get_epsilon(DELTA))
    doc = report.to_json()
    assert doc["unit"] == "site" and len(doc["rounds"]) == 4


def test_fedavg_charges_refuse_impossible_counts() -> None:
    with pytest.raises(ConfigError, match=r"1\.\.4"):
        fedavg_charges([5], 4)
    with pytest.raises(ConfigError, match="n_sites"):
        fedavg_charges([1], 0)


def test_extending_a_report_round_by_round_equals_computing_it_at_once() -> None:
    from fedcare.privacy.dp.report import RoundCharge, epsilon_history
    from fedcare.privacy.dp.spec import PrivacySpec

    spec = PrivacySpec("dp_fedavg_central", clip=1.0, noise_multiplier=1.2, delta=1e-5)
    charges = [RoundCharge(r, 0.5 if r % 2 else 1.0, 1, 0.9 if r == 4 else None)
               for r in range(1, 7)]
    previous = None
    for r in range(1, len(charges) + 1):
        previous = epsilon_history(spec, charges[:r], previous)
    assert previous == epsilon_history(spec, charges)


# -- discrete (grid) noise ---------------------------------------------------------------------
def test_discrete_central_noise_is_accounted_exactly_as_the_continuous_one() -> None:
    # CKS20 Thm 14: one multivariate discrete Gaussian has the continuous zCDP, no slack.
    assert discrete_noise_multiplier(1.3, 0.01, 8) == 1.3
    assert discrete_noise_multiplier(0.0, 1.0, 24, shares=4) == 0.0


def test_distributed_discrete_noise_on_a_fine_grid_matches_the_continuous_figure() -> None:
    for shares, summed in [(4, 4), (10, 7), (50, 26)]:
        z = discrete_noise_multiplier(1.1, 1.0, 24, shares=shares, summed=summed)
        assert z == pytest.approx(1.1 * math.sqrt(summed / shares), rel=1e-15)
        assert z <= 1.1 * math.sqrt(summed / shares)


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_a_coarse_grid_costs_privacy_and_the_accountant_sees_it(accountant: str) -> None:
    # 10 shares of std 0.8 * 0.01 * 2^8 / sqrt(10) ~ 0.65 grid steps: Kairouz et al.'s
    # slack tau sqrt(d) is then large, even for a small model.
    z_eff = discrete_noise_multiplier(0.8, 0.01, 8, shares=10, dim=1_000)
    assert z_eff < 0.8
    assert epsilon(z_eff, 0.5, 10, DELTA, accountant) > epsilon(0.8, 0.5, 10, DELTA,
                                                                  accountant)
    # ... and more dimensions mean more slack (the default assumes 2^40 of them).
    assert discrete_noise_multiplier(0.8, 0.01, 8, shares=10) < z_eff


def test_discrete_noise_multiplier_refuses_a_grid_too_coarse_for_the_bound() -> None:
    with pytest.raises(ConfigError, match=r"raise secure_aggregation\.frac_bits"):
        discrete_noise_multiplier(0.1, 0.01, 8, shares=10)
    with pytest.raises(ConfigError, match="summed"):
        discrete_noise_multiplier(1.0, 1.0, 24, shares=3, summed=4)
    with pytest.raises(ConfigError, match="shares"):
        discrete_noise_multiplier(1.0, 1.0, 24, shares=0)


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_budget_first_noise_hits_the_target_for_the_discrete_mechanism(accountant: str) -> None:
    def effective(z: float) -> float:
        return discrete_noise_multiplier(z, 0.002, 8, shares=10, dim=10_000)

    z_cont = noise_for_budget(3.0, DELTA, 0.5, 20, accountant)
    z = noise_for_budget(3.0, DELTA, 0.5, 20, accountant, effective=effective)
    reached = epsilon(effective(z), 0.5, 20, DELTA, accountant)
    assert reached <= 3.0
    assert reached >= 3.0 * 0.98
    assert z > z_cont  # the coarse grid needs more noise than the continuous formula says
    # On a fine grid the discrete derivation is the continuous one.
    fine = noise_for_budget(3.0, DELTA, 0.5, 20, accountant, effective=lambda z: (
        discrete_noise_multiplier(z, 1.0, 24, shares=10)))
    assert fine == z_cont


def test_config_budget_first_distributed_noise_uses_the_discrete_bound() -> None:
    from fedcare.config import parse_config
    from fedcare.engine.assembly import derive_noise

    def cfg(frac_bits: int) -> object:
        return parse_config({
            "data": {"source": "builtin", "sites": 10, "standardize": False},
            "study": {"rounds": 5},
            "privacy": {"mode": "dp_fedavg_distributed", "clip": 0.002, "target_epsilon": 4.0,
                        "accountant": "rdp"},
            "secure_aggregation": {"protocol": "secagg", "frac_bits": frac_bits}})

    import math

    from fedcare.privacy.secagg.config import survivor_threshold

    # A round may end with only the survivor threshold t of the 10 shares in the sum (each
    # site charges for that), so the noise is derived for t shares.
    t = survivor_threshold(10, None, 1)
    coarse, fine = derive_noise(cfg(8), n_sites=10), derive_noise(cfg(24), n_sites=10)
    assert fine == pytest.approx(noise_for_budget(4.0, DELTA, 1.0, 5, "rdp") / math.sqrt(t / 10),
                                 rel=0.02)
    assert coarse > fine
    for z, bits in ((coarse, 8), (fine, 24)):
        assert epsilon(discrete_noise_multiplier(z, 0.002, bits, shares=10, summed=t), 1.0, 5,
                       DELTA, "rdp") <= 4.0
