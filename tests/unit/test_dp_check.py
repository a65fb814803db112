"""DP that cannot learn is caught before training (issue 14, item 5): DP-FedAvg with
epsilon = 1 over 4 sites reached 0.345 accuracy on breast cancer with no warning."""

from __future__ import annotations

import math
from typing import Any

import pytest

from fedcare.config import parse_config
from fedcare.core.errors import ConfigError
from fedcare.engine.assembly import derive_noise
from fedcare.engine.dp_check import MIN_STUDY_SNR, assess_dp, refuse_unless_learnable
from fedcare.sim.runner import simulate

LOGREG_PARAMS = 31  # breast cancer: 30 features + bias


def _cfg(eps: float = 1.0, sites: int = 4, rounds: int = 20, mode: str = "dp_fedavg_central",
         **privacy: Any) -> dict[str, Any]:
    return {"study": {"name": "dp-check", "rounds": rounds},
            "data": {"source": "builtin", "sites": sites, "partition": "iid",
                     "stats_clip": [0, 4300]},  # DP feature statistics need the ranges
            "model": {"name": "logreg"}, "run": {"workers": 1},
            "baselines": {"local": False, "centralized": False},
            "privacy": {"mode": mode, "clip": 0.5, "delta": 1e-5,
                        **({"target_epsilon": eps} if "noise_multiplier" not in privacy
                           else {}), **privacy}}


def test_epsilon_1_over_4_sites_is_judged_unlearnable_with_its_numbers() -> None:
    cfg = parse_config(_cfg())
    z = derive_noise(cfg, n_sites=4)

    a = assess_dp(cfg, 4, LOGREG_PARAMS)

    assert a is not None and not a.learnable
    assert a.noise_std == pytest.approx(z * 0.5 / 4)  # z·C/n on the averaged update
    assert a.snr_study == pytest.approx(math.sqrt(20) * 4 / (z * math.sqrt(LOGREG_PARAMS)))
    text = a.summary()
    assert "noise std on the averaged update" in text and "C = 0.5" in text
    assert "more sites per round" in text and "dp_sgd" in text
    assert "privacy.target_epsilon" in text


def test_suggested_site_count_and_epsilon_do_reach_the_threshold() -> None:
    a = assess_dp(parse_config(_cfg()), 4, LOGREG_PARAMS)
    assert a is not None
    sites = int(a.suggestions[0].split("about ")[1].split()[0])
    eps = float(a.suggestions[1].split(">= ")[1].split()[0])

    more_sites = assess_dp(parse_config(_cfg(sites=sites)), sites, LOGREG_PARAMS)
    larger_eps = assess_dp(parse_config(_cfg(eps=eps)), 4, LOGREG_PARAMS)

    assert more_sites is not None and more_sites.learnable
    assert larger_eps is not None and larger_eps.snr_study >= MIN_STUDY_SNR


def test_explicit_noise_multiplier_gets_a_noise_suggestion() -> None:
    a = assess_dp(parse_config(_cfg(noise_multiplier=50.0)), 4, LOGREG_PARAMS)

    assert a is not None and not a.learnable
    assert any("privacy.noise_multiplier (<=" in s for s in a.suggestions)


def test_non_dp_fedavg_studies_are_not_assessed() -> None:
    sgd = parse_config(_cfg(mode="dp_sgd", noise_multiplier=1.0))
    none = parse_config({"data": {"source": "builtin"}})

    assert assess_dp(sgd, 4, LOGREG_PARAMS) is None
    assert assess_dp(none, 4, LOGREG_PARAMS) is None
    refuse_unless_learnable(None)  # nothing to refuse


def test_simulate_refuses_before_training_and_force_runs_it_with_a_warning() -> None:
    seen: list[Any] = []

    with pytest.raises(ConfigError) as err:
        simulate(_cfg(rounds=2), on_dp_check=seen.append)
    with pytest.warns(UserWarning, match="cannot learn"):
        history = simulate(_cfg(rounds=2), force=True).to_dict()

    assert "cannot learn" in err.value.message and "--force" in err.value.message
    assert len(seen) == 1 and not seen[0].learnable
    assert history["dp_check"]["learnable"] is False and len(history["rounds"]) == 2


def test_a_learnable_study_runs_without_force() -> None:
    history = simulate(_cfg(eps=8.0, sites=8, rounds=2, noise_multiplier=0.5)).to_dict()

    assert history["dp_check"]["learnable"] is True
