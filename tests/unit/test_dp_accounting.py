"""Accounting against dp-accounting's own reference computation; budget-first noise."""

from __future__ import annotations

import math

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from fedcare.core.errors import ConfigError
from fedcare.privacy.dp import PrivacyBudgetError, PrivacySpec, epsilon, noise_for_budget
from fedcare.privacy.dp.accounting import MAX_NOISE, PLD_DISCRETIZATION
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
