"""Study assembly: what a study's configuration resolves to once sites and row counts are known.

The first piece of the one assembly shared by the simulation runner, the hub and the node
(architecture review P2): the configuration schema (:mod:`fedcare.config`) stays a leaf that
knows only :mod:`fedcare.core`, and the step from "what the study asks" to "which privacy
mechanism with which noise" - which needs the accountant - lives here, above both.
"""

from __future__ import annotations

import math

from fedcare.config import StudyConfig
from fedcare.core.errors import ConfigError
from fedcare.privacy.dp.accounting import discrete_noise_multiplier, noise_for_budget
from fedcare.privacy.dp.spec import PrivacySpec
from fedcare.privacy.secagg.config import survivor_threshold


def derive_noise(cfg: StudyConfig, rows_per_site: int | None = None, *,
                 n_sites: int | None = None) -> float:
    """The study's noise multiplier: ``privacy.noise_multiplier``, or (budget-first) the
    smallest one reaching ``privacy.target_epsilon`` over the whole study.

    DP-SGD: ``q = batch_size / rows`` and ``steps = steps per round x rounds``, so the answer
    depends on the site's row count - each site derives its own noise and its epsilon is per
    site (only the site knows its rows). DP-FedAvg: ``q`` is the share of sites sampled per
    round (``n_sites`` given: ``max(min_sites, ceil(fraction x n_sites)) / n_sites`` as the
    sampler draws; else ``strategy.fraction``) and ``steps = rounds``.
    Raises :class:`~fedcare.privacy.dp.errors.PrivacyBudgetError` when the budget is unreachable.
    """
    p = cfg.privacy
    if p.mode == "none":
        raise ConfigError("privacy.mode is 'none': the study has no noise to derive")
    if p.noise_multiplier is not None:
        return float(p.noise_multiplier)
    assert p.target_epsilon is not None  # guaranteed by PrivacySection's validator
    rounds = cfg.study.rounds
    if p.mode == "dp_sgd":
        if rows_per_site is None or isinstance(rows_per_site, bool) or rows_per_site < 1:
            raise ConfigError("budget-first DP-SGD needs the site's training row count "
                              f"(rows_per_site >= 1), got {rows_per_site!r}")
        t = cfg.train
        q = min(1.0, t.batch_size / rows_per_site)
        per_round = t.local_steps or t.local_epochs * math.ceil(rows_per_site / t.batch_size)
        return noise_for_budget(p.target_epsilon, p.delta, q, per_round * rounds, p.accountant)
    s = cfg.strategy
    if n_sites is not None:
        if isinstance(n_sites, bool) or n_sites < 1:
            raise ConfigError(f"n_sites must be >= 1, got {n_sites!r}")
        sampled = n_sites if s.fraction >= 1 else min(
            n_sites, max(s.min_sites, math.ceil(s.fraction * n_sites), 1))
        q = sampled / n_sites
    else:
        q = s.fraction
    effective = None
    if p.mode == "dp_fedavg_distributed":
        # Each sampled site adds a discrete Gaussian share, and a round may end with only the
        # survivor threshold t of them in the sum (a dropout): each site charges its ledger
        # for t shares (SitePrivacy), so the noise is derived for t too - the target then
        # holds for what every site is charged, not only for a round without dropouts.
        shares = sampled if n_sites is not None else max(1, s.min_sites)
        summed = (survivor_threshold(shares, cfg.secure_aggregation.threshold,
                                     s.min_completed) if shares > 1 else 1)

        def effective(z: float) -> float:
            return discrete_noise_multiplier(z, p.clip, cfg.secure_aggregation.frac_bits,
                                             shares=shares, summed=summed)
    return noise_for_budget(p.target_epsilon, p.delta, q, rounds, p.accountant,
                            effective=effective)


def privacy_spec(cfg: StudyConfig, rows_per_site: int | None = None, *,
                 n_sites: int | None = None) -> PrivacySpec | None:
    """The study's resolved :class:`~fedcare.privacy.dp.spec.PrivacySpec` (None without DP);
    arguments as :func:`derive_noise`."""
    if cfg.privacy.mode == "none":
        return None
    p = cfg.privacy
    return PrivacySpec(p.mode, clip=p.clip,  # type: ignore[arg-type]
                       noise_multiplier=derive_noise(cfg, rows_per_site, n_sites=n_sites),
                       delta=p.delta, accountant=p.accountant)  # type: ignore[arg-type]
