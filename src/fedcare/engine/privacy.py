"""Differential privacy in the round loop: the site's half (ledger, clipping, noise) and the
hub's half (uniform averaging, central noise, accounting).

The mechanisms and the accountant are :mod:`fedcare.privacy.dp`; this module decides *when*
each runs. At a site, the privacy ledger is charged BEFORE any data is touched, so a task past
the site's own budget never trains (even if the hub asks); a DP-FedAvg update leaves the site
clipped (and, in distributed mode, noised) as a difference to the global model. At the hub,
DP-FedAvg averages the clipped differences uniformly (weighting by rows would break the
sensitivity bound), adds the central noise once to the sum, and records epsilon after every
round in the history.

Feature statistics (a study that standardizes asks every site once, before training, for its
row count and per-feature sums and sums of squares) are a release of their own: under DP each
site clips every value to the study's declared range (``data.stats_clip``), which bounds one
row's contribution (:func:`fedcare.data.standardize.bounded_sensitivity`), and adds Gaussian
noise calibrated with ``dp-accounting`` to ``privacy.stats_epsilon`` (one Gaussian mechanism,
sample rate 1). The site charges its ledger for it BEFORE touching its data, like any task; the
hub composes the same charge into the study's epsilon (a "round 0" row). The unit is the
record (one patient row added or removed): in a DP-FedAvg study the rounds are site-level,
and the composed figure is then a record-level bound (a site-level guarantee implies a
record-level one, not the reverse).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from fedcare.core.errors import FedcareError, ProtocolError, ValidationError
from fedcare.core.learning import DpSgdFacts
from fedcare.core.messages import Task, TaskKind, TrainConfig, first_attempt_id
from fedcare.privacy.dp.spec import Mechanism, PrivacySpec

#: Task meta key: how many sites a DP-FedAvg round sampled (each adds 1/n of the noise).
DP_SITES = "dp_sites"


@dataclass
class SitePrivacy:
    """A site's privacy settings for one study: the study's spec (None: no DP) and the site's
    own ledger (None: the site keeps no budget, and accepts only non-DP studies' plain terms).
    """

    spec: PrivacySpec | None
    ledger: Any | None  # fedcare.privacy.dp.ledger.PrivacyLedger
    rows: int
    #: Sites in the approved study, and the share of a secure round's participants that must
    #: survive (distributed noise: the sum carries at least that share of the noise).
    study_sites: int = 1
    secure_threshold: float | None = 1.0
    #: Fractional bits of the fixed-point grid the DP-FedAvg noise lives on (the study's
    #: ``secure_aggregation.frac_bits``, also used without secure aggregation).
    frac_bits: int = 24
    #: The study's ``strategy.min_completed`` (it raises the survivor threshold, see
    #: :func:`fedcare.privacy.secagg.config.survivor_threshold`).
    min_completed: int = 1
    #: Noise multiplier of the feature statistics (None: the study releases none under DP)
    #: and their declared ranges (``data.stats_clip``).
    stats_noise: float | None = None
    stats_clip: Any = None

    def noised_stats(self, x: np.ndarray, feature_names: Sequence[str], in_sum: int
                     ) -> tuple[float, np.ndarray, np.ndarray]:
        """The site's DP feature statistics ``(count, Σu, Σu²)`` plus Gaussian noise (see
        :meth:`noised_stats_observed`)."""
        count, total, total_sq, _ = self.noised_stats_observed(x, feature_names, in_sum,
                                                               observed=False)
        return count, total, total_sq

    def noised_stats_observed(self, x: np.ndarray, feature_names: Sequence[str], in_sum: int,
                              *, observed: bool = True
                              ) -> tuple[float, np.ndarray, np.ndarray, np.ndarray | None]:
        """The site's DP feature statistics ``(count, Σu, Σu²)`` (bounded units, see
        :func:`fedcare.data.standardize.bounded_sums`) plus Gaussian noise.

        The noise protects the released value against the hub: alone (``in_sum = 1``) it has
        std ``z·Δ``; inside a secure sum that is guaranteed to hold at least ``in_sum`` sites'
        vectors, each site adds ``z·Δ/sqrt(in_sum)`` so that sum carries ``z·Δ`` (distributed
        noise, as DP-FedAvg's). ``Δ = sqrt(1 + 2d)`` bounds one row's ``[1, u, u²]``. The
        noise is a discrete Gaussian on the grid ``2^-STATS_FRAC_BITS``; its shares are
        thousands of grid steps wide, where the accountant's figure for a sum of discrete
        Gaussian shares (Kairouz et al. 2021) is ``z`` itself, which is what is charged.

        ``observed`` (a study that imputes): missing values add nothing to the sums and the
        counts of observed values are released with them (``Δ = sqrt(1 + 3d)``), returned
        last (None otherwise)."""
        from fedcare.data.standardize import (
            STATS_FRAC_BITS,
            bounded_grid_sums,
            bounded_sensitivity,
            stats_bounds,
        )
        from fedcare.privacy.dp import discrete_gaussian as dg

        if self.stats_noise is None or self.stats_clip is None:
            raise ProtocolError("the approved study releases no DP feature statistics")
        d = len(feature_names)
        try:
            low, high = stats_bounds(self.stats_clip, feature_names)
            k = bounded_grid_sums(x, low, high, STATS_FRAC_BITS, observed=observed)
        except ValueError as exc:
            raise ValidationError(str(exc)) from exc
        # Exact integers throughout (Mironov 2012; Canonne, Kamath, Steinke 2020): the
        # sensitivity, rounded up, and one of in_sum discrete Gaussian shares of
        # N_Z(0, (z·Δ·2^f)^2) in grid steps - what DP-FedAvg's noise is too.
        sensitivity = math.nextafter(bounded_sensitivity(d, observed=observed), math.inf)
        k = k + dg.grid_noise(k.shape, dg.grid_variance(self.stats_noise, sensitivity,
                                                        STATS_FRAC_BITS, in_sum))
        v = k.astype(np.float64) * 2.0**-STATS_FRAC_BITS  # exact: |k| < 2^53
        return (float(v[0]), v[1:1 + d], v[1 + d:1 + 2 * d],
                v[1 + 2 * d:] if observed else None)

    def check(self, task: Task) -> None:
        """Refuse a DP-FedAvg task whose round size the hub could have inflated to shrink the
        site's noise share: n must be the round's participant list (validated by secure
        aggregation against the study) and at most the study's sites."""
        spec = self.spec
        if spec is None or not spec.mechanism.is_dp_fedavg or task.kind is not TaskKind.FIT:
            return
        n = task.meta.get(DP_SITES)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= self.study_sites:
            raise ProtocolError("a DP-FedAvg task must say how many sites the round sampled "
                                f"(1..{self.study_sites}), got {n!r}")
        if spec.mechanism is Mechanism.DP_FEDAVG_DISTRIBUTED and n != len(
                task.meta.get("participants") or []):
            raise ProtocolError("distributed DP: the round size must equal its secure-"
                                "aggregation participant list")

    def _noise_against_hub(self, spec: PrivacySpec, task: Task) -> float:
        """The noise multiplier that protects this site's update from the HUB: none in
        central mode (the hub adds it) unless the site's policy trusts the hub; in
        distributed mode the share guaranteed by the protocol's survivor threshold."""
        if spec.mechanism is Mechanism.DP_FEDAVG_CENTRAL:
            policy = getattr(self.ledger, "policy", None)
            if not getattr(policy, "trust_hub_noise", False):
                from fedcare.privacy.dp.errors import PrivacyBudgetError

                raise PrivacyBudgetError(
                    "central DP-FedAvg: the hub adds the noise, so the site's update reaches "
                    "it un-noised; this site's privacy policy does not trust the hub "
                    "(trust_hub_noise = false) - use dp_fedavg_distributed with secure "
                    "aggregation, or set trust_hub_noise = true")
            return spec.noise_multiplier
        if spec.mechanism is Mechanism.DP_FEDAVG_DISTRIBUTED:
            from fedcare.privacy.dp.accounting import discrete_noise_multiplier
            from fedcare.privacy.secagg.config import survivor_threshold

            n = int(task.meta.get(DP_SITES, 1))
            t = survivor_threshold(n, self.secure_threshold, self.min_completed) if n > 1 else 1
            return discrete_noise_multiplier(spec.noise_multiplier, spec.clip, self.frac_bits,
                                             shares=n, summed=t)
        return spec.noise_multiplier

    def charge(self, task: Task, train: TrainConfig) -> None:
        """Record (and so first check) what this task will spend of the site's budget.

        Every attempt at a secure round's protocol is one task to the ledger (the id it has in
        attempt 1), and the ledger never charges one task twice."""
        if self.ledger is None or task.kind is TaskKind.EVALUATE or task.kind.is_protocol_step:
            return
        from fedcare.privacy.dp.ledger import LedgerEntry

        task = replace(task, task_id=first_attempt_id(task.task_id))
        spec = self.spec
        if task.kind is TaskKind.STATS and spec is not None and self.stats_noise is not None:
            # Record level, one Gaussian release at sample rate 1 (see the module docstring).
            entry = LedgerEntry(study=task.study, round=task.round, task_id=task.task_id,
                                mechanism=spec.mechanism, noise_multiplier=self.stats_noise,
                                sample_rate=1.0, steps=1, delta=spec.delta)
        elif task.kind is TaskKind.STATS or spec is None:
            entry = LedgerEntry(study=task.study, round=task.round, task_id=task.task_id,
                                mechanism=Mechanism.NONE, noise_multiplier=0.0, sample_rate=1.0,
                                steps=0, delta=spec.delta if spec else 1e-5)
        elif spec.mechanism is Mechanism.DP_SGD:
            from fedcare.learners.torch_learner import dp_sgd_sample_rate, dp_sgd_steps

            entry = LedgerEntry(study=task.study, round=task.round, task_id=task.task_id,
                                mechanism=spec.mechanism,
                                noise_multiplier=spec.noise_multiplier,
                                sample_rate=dp_sgd_sample_rate(self.rows, train.batch_size),
                                steps=dp_sgd_steps(self.rows, train), delta=spec.delta)
        else:
            # Site level, sample rate 1: amplification by sampling does not hold against the
            # hub that chose the sample.
            entry = LedgerEntry(study=task.study, round=task.round, task_id=task.task_id,
                                mechanism=spec.mechanism,
                                noise_multiplier=self._noise_against_hub(spec, task),
                                sample_rate=1.0, steps=1, delta=spec.delta)
        self.ledger.charge(entry)


class HubPrivacy:
    """The hub's half: weights, central noise and the epsilon history of one study."""

    def __init__(self, spec: PrivacySpec, n_sites: int, frac_bits: int = 24, *,
                 stats_noise: float | None = None) -> None:
        self.spec = spec
        self.n_sites = n_sites
        self.frac_bits = frac_bits
        #: The feature statistics' noise multiplier when the study releases them (composed
        #: into the reported epsilon as a "round 0" charge before the first round).
        self.stats_noise = stats_noise
        #: Last reports, extended by one round each time instead of recomputed.
        self._last: Any = None
        self._last_sites: dict[str, Any] = {}

    @property
    def is_dp_fedavg(self) -> bool:
        return self.spec.mechanism.is_dp_fedavg

    def meta(self, sampled: Sequence[str]) -> dict[str, Any]:
        return {DP_SITES: len(sampled)} if self.is_dp_fedavg else {}

    def noisy_sum(self, total: np.ndarray) -> np.ndarray | None:
        """Central mode only: the SUM of the clipped differences plus discrete Gaussian
        N_Z(0, (z·C·2^f)²) grid steps, exact in float64 (the caller divides afterwards, so
        the release is a function of the noisy sum alone - Mironov 2012)."""
        if self.spec.mechanism is not Mechanism.DP_FEDAVG_CENTRAL:
            return None
        from fedcare.privacy.dp.hooks import noisy_sum

        return noisy_sum(total, self.spec, frac_bits=self.frac_bits)

    def report(self, rounds: Sequence[Any]) -> dict[str, Any]:
        """Epsilon per round and cumulative for ``history.json`` (and the report)."""
        from fedcare.privacy.dp.report import RoundCharge, epsilon_history

        if not self.is_dp_fedavg:
            return self._dp_sgd_report(rounds)
        from fedcare.privacy.dp.accounting import discrete_noise_multiplier

        charges: list[Any] = self._stats_charge()
        for r in rounds:
            k, got = len(r.sites_sampled), len(r.sites_completed)
            z = None
            if self.spec.mechanism is Mechanism.DP_FEDAVG_DISTRIBUTED and got > 0:
                # Each site added a discrete Gaussian share of 1/k of the variance: the sum
                # of got shares (Kairouz et al. 2021; ~ z sqrt(got/k) on a fine grid).
                z = discrete_noise_multiplier(self.spec.noise_multiplier, self.spec.clip,
                                              self.frac_bits, shares=k, summed=got)
            charges.append(RoundCharge(r.round, k / self.n_sites, 1, z))
        self._last = epsilon_history(self.spec, charges, self._last)
        return self._with_stats(self._last.to_json())

    def _stats_charge(self) -> list[Any]:
        from fedcare.privacy.dp.report import RoundCharge

        if self.stats_noise is None:
            return []
        return [RoundCharge(STATS_ROUND, 1.0, 1, self.stats_noise)]

    def _with_stats(self, report: dict[str, Any]) -> dict[str, Any]:
        if self.stats_noise is not None:
            from fedcare.privacy.dp.accounting import epsilon

            report["stats"] = {"round": STATS_ROUND, "noise_multiplier": self.stats_noise,
                               "epsilon": epsilon(self.stats_noise, 1.0, 1, self.spec.delta,
                                                  self.spec.accountant),
                               "unit": "record"}
        return report

    def _dp_sgd_report(self, rounds: Sequence[Any]) -> dict[str, Any]:
        """DP-SGD is per site (each knows its rows): one history per site from the sample
        rate, steps and noise it reported with every update."""
        from fedcare.privacy.dp.report import RoundCharge, epsilon_history

        per_site: dict[str, list[Any]] = {}
        zs: dict[str, float] = {}
        bad: dict[str, str] = {}
        for r in rounds:
            for site, m in r.train_metrics.items():
                try:
                    facts = DpSgdFacts.from_metrics(m)
                except ValueError as exc:  # a site reported impossible accounting facts
                    bad[site] = str(exc)
                    continue
                if facts is not None:
                    per_site.setdefault(site, self._stats_charge()).append(
                        RoundCharge(r.round, facts.sample_rate, facts.steps))
                    zs[site] = facts.noise_multiplier
        sites: dict[str, Any] = {s: {"epsilon": "inf", "error": why} for s, why in bad.items()}
        for site, charges in per_site.items():
            if site in bad:
                continue
            try:
                spec = PrivacySpec(self.spec.mechanism, clip=self.spec.clip,
                                   noise_multiplier=zs[site], delta=self.spec.delta,
                                   accountant=self.spec.accountant)
                report = epsilon_history(spec, charges, self._last_sites.get(site))
                self._last_sites[site] = report
                sites[site] = report.to_json()
            except FedcareError as exc:  # a site reported impossible accounting facts
                sites[site] = {"epsilon": "inf", "error": exc.message}
        worst = max((s["epsilon"] for s in sites.values()),
                    key=lambda e: math.inf if e == "inf" else e, default=0.0)
        return self._with_stats({
            "mechanism": self.spec.mechanism.value, "unit": self.spec.mechanism.unit,
            "delta": self.spec.delta, "accountant": self.spec.accountant.value,
            "clip": self.spec.clip, "epsilon": worst, "sites": sites})


def hub_privacy(cfg: Any, n_sites: int) -> HubPrivacy | None:
    """The hub's half for a study config (None without DP). For DP-SGD the hub never needs
    the noise itself (each site derives and reports its own), only the mechanism and delta."""
    from fedcare.engine.assembly import privacy_spec

    p = cfg.privacy
    if p.mode == "none":
        return None
    if p.mode == "dp_sgd":
        spec = PrivacySpec(Mechanism.DP_SGD, clip=p.clip,
                           noise_multiplier=p.noise_multiplier or 0.0, delta=p.delta,
                           accountant=p.accountant)
    else:
        spec = privacy_spec(cfg, n_sites=n_sites)  # type: ignore[assignment]
    return HubPrivacy(spec, n_sites, frac_bits=cfg.secure_aggregation.frac_bits,
                      stats_noise=stats_noise_multiplier(cfg))


def site_privacy(cfg: Any, rows: int, n_sites: int, ledger: Any | None = None
                 ) -> SitePrivacy | None:
    """The site's half for a study config; None when neither DP nor a ledger applies."""
    from fedcare.engine.assembly import privacy_spec

    spec = privacy_spec(cfg, rows, n_sites=n_sites) if cfg.privacy.mode != "none" else None
    if spec is None and ledger is None:
        return None
    return SitePrivacy(spec, ledger, rows, study_sites=n_sites,
                       secure_threshold=cfg.secure_aggregation.threshold,
                       frac_bits=cfg.secure_aggregation.frac_bits,
                       min_completed=cfg.strategy.min_completed,
                       stats_noise=stats_noise_multiplier(cfg),
                       stats_clip=cfg.data.stats_clip)


#: The round number of the feature-statistics exchange (before round 1's training), in task
#: ids (``<study>/r0/stats/<site>``), secure-aggregation sessions and the epsilon history.
STATS_ROUND = 0


def releases_stats(cfg: Any) -> bool:
    """Whether the study computes the federation's feature statistics (it standardizes
    tabular features, imputes missing values or encodes categories)."""
    d = cfg.data
    return (bool(d.standardize or d.impute != "none" or d.categorical)
            and getattr(d, "image_size", None) is None)


@functools.lru_cache(maxsize=64)
def _stats_noise(epsilon: float, delta: float, accountant: str) -> float:
    from fedcare.privacy.dp.accounting import noise_for_budget

    return noise_for_budget(epsilon, delta, 1.0, 1, accountant)


def stats_noise_multiplier(cfg: Any) -> float | None:
    """The feature statistics' Gaussian noise multiplier: the smallest (``dp-accounting``,
    the study's accountant) whose single release at sample rate 1 meets
    ``privacy.stats_epsilon`` at ``privacy.delta``; None without DP or without statistics."""
    p = cfg.privacy
    if p.mode == "none" or not releases_stats(cfg):
        return None
    return _stats_noise(float(p.stats_epsilon), float(p.delta), str(p.accountant))


def stats_noise_std(noise_multiplier: float, n_features: int, in_sum: int) -> float:
    """Each site's noise std on its ``[count, Σu, Σu²]``: ``z·sqrt(1 + 2d)/sqrt(in_sum)``, so
    a sum of at least ``in_sum`` sites' vectors carries ``z`` times the sensitivity."""
    from fedcare.data.standardize import bounded_sensitivity

    if isinstance(in_sum, bool) or not isinstance(in_sum, int) or in_sum < 1:
        raise ProtocolError(f"a secure sum must hold at least 1 site, got {in_sum!r}")
    return noise_multiplier * bounded_sensitivity(n_features) / math.sqrt(in_sum)
