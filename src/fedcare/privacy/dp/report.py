"""Epsilon round by round, for ``history.json`` and the study report.

The hub knows each round's participation, so it can say what the released model's privacy
is after every round: for DP-FedAvg one charge per round (``sample_rate`` = sampled sites /
all sites, 1 step); for DP-SGD one history per site (``sample_rate`` and ``steps`` that the
site reports with its update, since only the site knows its row count).

Sampling caveat: the accountants assume Poisson sampling. fedcare's site sampler draws a
fixed-size subset, so for ``fraction < 1`` the DP-FedAvg figure is the customary Poisson
approximation (as in McMahan et al. 2018's experiments); with ``fraction = 1`` it is exact.
Amplification by sampling protects against observers of the model, not against the hub that
chose the sample - a site's own ledger charges DP-FedAvg rounds at sample rate 1. DP-SGD's
amplification (rows sampled at ``q = batch / rows``) does hold against the hub: each site
draws its Poisson samples from a secret seed, never from the study's public one
(:class:`~fedcare.learners.torch_learner.DpSgdOptions`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from fedcare.core.errors import ConfigError
from fedcare.privacy.dp.accounting import epsilon_of, sampled_gaussian_event
from fedcare.privacy.dp.spec import PrivacySpec


@dataclass(frozen=True)
class RoundCharge:
    """One round's use of the mechanism: ``steps`` steps at ``sample_rate``; a round whose
    noise fell short of the study's (distributed noise with sites missing from the sum)
    carries its own effective ``noise_multiplier``."""

    round: int
    sample_rate: float
    steps: int
    noise_multiplier: float | None = None


@dataclass(frozen=True)
class RoundPrivacy:
    round: int
    sample_rate: float
    steps: int
    epsilon_round: float
    epsilon_cumulative: float


@dataclass(frozen=True)
class PrivacyReport:
    """The mechanism's settings and epsilon per round (alone and cumulative) at ``delta``."""

    mechanism: str
    unit: str
    noise_multiplier: float
    clip: float
    delta: float
    accountant: str
    rounds: tuple[RoundPrivacy, ...]

    @property
    def epsilon(self) -> float:
        """Cumulative epsilon after the last round (0 before any round)."""
        return self.rounds[-1].epsilon_cumulative if self.rounds else 0.0

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (infinite epsilon written as the string "inf")."""

        def num(x: float) -> float | str:
            return x if math.isfinite(x) else "inf"

        return {"mechanism": self.mechanism, "unit": self.unit,
                "noise_multiplier": self.noise_multiplier, "clip": self.clip,
                "delta": self.delta, "accountant": self.accountant,
                "epsilon": num(self.epsilon),
                "rounds": [{**asdict(r), "epsilon_round": num(r.epsilon_round),
                            "epsilon_cumulative": num(r.epsilon_cumulative)}
                           for r in self.rounds]}


def fedavg_charges(sampled_per_round: Sequence[int], n_sites: int,
                   start_round: int = 1) -> list[RoundCharge]:
    """DP-FedAvg charges: round ``start_round + i`` sampled ``sampled_per_round[i]`` sites."""
    if isinstance(n_sites, bool) or not isinstance(n_sites, int) or n_sites < 1:
        raise ConfigError(f"n_sites must be an integer >= 1, got {n_sites!r}")
    bad = [k for k in sampled_per_round if not 0 < k <= n_sites]
    if bad:
        raise ConfigError(f"sampled site counts must be in 1..{n_sites}, got {bad}")
    return [RoundCharge(start_round + i, k / n_sites, 1) for i, k in enumerate(sampled_per_round)]


def epsilon_history(spec: PrivacySpec, charges: Sequence[RoundCharge],
                    previous: PrivacyReport | None = None) -> PrivacyReport:
    """Epsilon of each round alone and of rounds 1..r composed, with ``spec``'s accountant.

    Identical charges are composed as one self-composed event (PLD self-composition is one
    FFT), so a long study costs one accountant call per distinct (sample rate, steps) pair
    per round. ``previous`` (the report of a prefix of ``charges``) is reused row by row, so
    the engine, which reports after every round, pays only for the new round - not for the
    whole study again (100 rounds from scratch take ~12 s).
    """
    reuse = previous.rounds if previous is not None else ()
    z0, delta, acc = spec.noise_multiplier, spec.delta, spec.accountant
    alone: dict[tuple[float, int, float], float] = {}
    totals: dict[tuple[float, int, float], int] = {}
    rows = []
    for i, c in enumerate(charges):
        z = z0 if c.noise_multiplier is None else c.noise_multiplier
        key = (c.sample_rate, c.steps, z)
        sampled_gaussian_event(z, c.sample_rate, c.steps)  # validates the charge
        totals[key] = totals.get(key, 0) + 1
        old = reuse[i] if i < len(reuse) else None
        if old is not None and (old.round, old.sample_rate, old.steps) == (
                c.round, c.sample_rate, c.steps):
            alone.setdefault(key, old.epsilon_round)
            rows.append(old)
            continue
        reuse = ()  # the prefix no longer matches: compute from here on
        if key not in alone:
            alone[key] = _eps({key: 1}, delta, acc)
        rows.append(RoundPrivacy(c.round, c.sample_rate, c.steps, alone[key],
                                 _eps(totals, delta, acc)))
    return PrivacyReport(spec.mechanism.value, spec.mechanism.unit, z0, spec.clip, delta,
                         spec.accountant.value, tuple(rows))


def _eps(groups: dict[tuple[float, int, float], int], delta: float, acc: str) -> float:
    steps = {k: k[1] * n for k, n in groups.items() if k[1] * n > 0}
    if not steps:
        return 0.0
    if any(k[2] == 0 for k in steps):
        return math.inf
    return epsilon_of([sampled_gaussian_event(z, q, s) for (q, _, z), s in steps.items()],
                      delta, acc)
