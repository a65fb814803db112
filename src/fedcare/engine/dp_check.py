"""Can a site-level DP study learn at all? The noise against the signal, before training.

DP-FedAvg (McMahan et al. 2018) clips each site's update to L2 norm ``C`` and adds
N(0, (z·C)²) per coordinate to the sum of the ``n`` sampled sites' updates, so the *averaged*
update carries noise of standard deviation ``z·C/n`` per coordinate and of norm about
``z·C·√d/n`` over ``d`` parameters, while the signal it averages has norm at most ``C``. The
ratio of the two, ``n / (z·√d)``, is the signal-to-noise ratio of one round; over ``T`` rounds the
consistent part of the updates adds up ``T`` times and independent noise only ``√T`` times, so
the study's ratio is ``√T · n / (z·√d)``. Budget-first studies make ``z`` grow as ε shrinks:
with few sites the ratio falls below one and the model learns nothing (breast cancer, 4 sites,
ε = 1: 0.345 accuracy, below the majority class).

:data:`MIN_STUDY_SNR` is the threshold below which the check refuses (``--force`` overrides),
measured in ``benchmarks/dp_snr.py`` (results in ``benchmarks/results/dp_snr.md``). Record-level
DP-SGD is not checked here: its noise is per batch of records inside a site and its utility
depends on the number of local steps, not on the number of sites.

Pure computation (plus the accountant, for the "larger ε" suggestion): the simulation runner and
the hub's study submission call the same functions.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

from fedcare.config import StudyConfig
from fedcare.core.errors import ConfigError
from fedcare.engine.assembly import derive_noise

#: Below this study-level signal-to-noise ratio (√T·n/(z·√d)) DP-FedAvg did not learn in the
#: benchmark (benchmarks/results/dp_snr.md): accuracy stayed near or below the majority class.
MIN_STUDY_SNR = 1.0
#: The ε values tried, in order, for the "a larger ε would work" suggestion.
_EPSILON_LADDER = (0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0)


@dataclass(frozen=True)
class DpAssessment:
    """The noise a DP-FedAvg study adds against the scale of its clipped updates."""

    mechanism: str
    noise_multiplier: float
    clip: float
    sites_per_round: int
    rounds: int
    parameters: int
    target_epsilon: float | None
    #: Standard deviation per coordinate of the noise on the averaged update: z·C/n.
    noise_std: float
    #: Expected L2 norm of that noise, z·C·√d/n, against the clipped update's norm C.
    noise_norm: float
    snr_round: float
    snr_study: float
    threshold: float = MIN_STUDY_SNR
    suggestions: list[str] = field(default_factory=list)

    @property
    def learnable(self) -> bool:
        return self.snr_study >= self.threshold

    def summary(self) -> str:
        """One paragraph for the console and the error message."""
        head = (f"DP check ({self.mechanism}, z = {self.noise_multiplier:.3g}, "
                f"{self.sites_per_round} site(s) per round, {self.parameters} parameters): "
                f"noise std on the averaged update z·C/n = {self.noise_std:.3g} per coordinate "
                f"(norm ≈ {self.noise_norm:.3g}) against the clipped update's norm "
                f"C = {self.clip:.3g}; signal-to-noise {self.snr_round:.3g} per round, "
                f"{self.snr_study:.3g} over {self.rounds} rounds (needs ≥ {self.threshold:g}).")
        if self.learnable:
            return head
        return (f"{head} The noise drowns the updates: this study cannot learn. What would "
                "work: " + "; ".join(self.suggestions) + ".")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "learnable": self.learnable}


def sites_per_round(cfg: StudyConfig, n_sites: int) -> int:
    """How many sites the sampler draws per round (as :func:`derive_noise` counts them)."""
    s = cfg.strategy
    if s.fraction >= 1:
        return n_sites
    return min(n_sites, max(s.min_sites, math.ceil(s.fraction * n_sites), 1))


def _snr(n: int, z: float, d: int, rounds: int) -> tuple[float, float]:
    per_round = math.inf if z == 0 else n / (z * math.sqrt(max(d, 1)))
    return per_round, per_round * math.sqrt(rounds)


def assess_dp(cfg: StudyConfig, n_sites: int, n_params: int) -> DpAssessment | None:
    """The noise-against-signal assessment of a DP-FedAvg study; None for other studies."""
    p = cfg.privacy
    if p.mode not in ("dp_fedavg_central", "dp_fedavg_distributed"):
        return None
    if n_sites < 1 or n_params < 1:
        raise ConfigError(f"the DP check needs >= 1 site and parameter, got {n_sites} site(s) "
                          f"and {n_params} parameter(s)")
    z = derive_noise(cfg, n_sites=n_sites)
    n = sites_per_round(cfg, n_sites)
    rounds = cfg.study.rounds
    snr_round, snr_study = _snr(n, z, n_params, rounds)
    assessment = DpAssessment(
        mechanism=p.mode, noise_multiplier=z, clip=p.clip, sites_per_round=n, rounds=rounds,
        parameters=n_params, target_epsilon=p.target_epsilon, noise_std=z * p.clip / n,
        noise_norm=z * p.clip * math.sqrt(n_params) / n, snr_round=snr_round,
        snr_study=snr_study)
    if assessment.learnable:
        return assessment
    return DpAssessment(**{**asdict(assessment),
                           "suggestions": _suggestions(cfg, n_sites, n_params, z)})


def _suggestions(cfg: StudyConfig, n_sites: int, n_params: int, z: float) -> list[str]:
    """What would reach the threshold: more sites, a larger ε, record-level DP-SGD."""
    rounds = cfg.study.rounds
    needed = math.ceil(MIN_STUDY_SNR * z * math.sqrt(n_params) / math.sqrt(rounds))
    out = [f"more sites per round (about {needed} at this noise, now "
           f"{sites_per_round(cfg, n_sites)})"]
    p = cfg.privacy
    if p.target_epsilon is not None:
        for eps in _EPSILON_LADDER:
            if eps <= p.target_epsilon:
                continue
            trial = cfg.model_copy(update={"privacy": p.model_copy(
                update={"target_epsilon": eps})})
            try:
                z_eps = derive_noise(trial, n_sites=n_sites)
            except ConfigError:
                continue
            if _snr(sites_per_round(cfg, n_sites), z_eps, n_params, rounds)[1] >= MIN_STUDY_SNR:
                out.append(f"a larger privacy.target_epsilon (>= {eps:g} reaches it)")
                break
        else:
            out.append(f"no privacy.target_epsilon up to {_EPSILON_LADDER[-1]:g} reaches it "
                       "with these sites")
    else:
        z_max = math.sqrt(rounds) * sites_per_round(cfg, n_sites) / (
            MIN_STUDY_SNR * math.sqrt(n_params))
        out.append(f"a smaller privacy.noise_multiplier (<= {z_max:.3g}, a larger epsilon)")
    out.append("record-level DP-SGD (privacy.mode = \"dp_sgd\": protects each patient rather "
               "than each site, and its noise shrinks with the rows, not the sites)")
    out.append("a smaller model (fewer parameters share the noise)")
    return out


def check_dp_study(cfg: StudyConfig, n_sites: int, *, force: bool = False) -> None:
    """The hub's check at submission: the model's size from the learner factory, then
    :func:`refuse_unless_learnable` (a :class:`ConfigError`, i.e. HTTP 422)."""
    if cfg.privacy.mode not in ("dp_fedavg_central", "dp_fedavg_distributed") or n_sites < 1:
        return
    from fedcare.config import FederatedData
    from fedcare.engine.learner_factory import ModelShape, make_learner

    assert isinstance(cfg.data, FederatedData)
    size = make_learner(cfg, ModelShape.of_federated(cfg.data)).initial_parameters().spec
    refuse_unless_learnable(assess_dp(cfg, n_sites, size.total_size), force=force)


def refuse_unless_learnable(assessment: DpAssessment | None, *, force: bool = False) -> None:
    """Raise :class:`ConfigError` for a study that cannot learn, unless ``force``; forced, warn
    (``warnings.warn``) so a Python caller still sees it."""
    if assessment is None or assessment.learnable:
        return
    if not force:
        raise ConfigError(assessment.summary() + " Pass --force (fedcare simulate, fedcare "
                          "study submit; POST /v1/studies?force=true) or force=True to run "
                          "it anyway.")
    warnings.warn(assessment.summary(), UserWarning, stacklevel=2)
