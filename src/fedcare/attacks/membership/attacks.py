"""Membership-inference attacks as pure functions from per-example statistics to scores.

Every attack returns one score per candidate example; higher means "more likely a member".
They are scored against the truth with :mod:`fedcare.attacks.membership.roc`.

* **Loss threshold** (Yeom, Giacomelli, Fredrikson & Jha 2018, "Privacy Risk in Machine
  Learning: Analyzing the Connection to Overfitting"): members tend to have lower loss, so the
  score is ``-loss``. Needs only the target model; measures the generalisation gap.
* **LiRA** (Carlini, Chien, Nasr, Song, Terzis & Tramer 2022, "Membership Inference Attacks
  From First Principles"): train shadow models on random halves of the candidates, so each
  example is IN for some shadows and OUT for the others; fit a Gaussian to its logit-scaled
  confidence in each group and score the target model's confidence by the likelihood ratio
  ``log N(phi; mu_in, s_in) - log N(phi; mu_out, s_out)`` (online), or by how far it lies
  above the OUT distribution, ``(phi - mu_out) / s_out`` (offline, no IN models needed).
  With few shadows (the paper: fewer than 64) per-example variances are too noisy and one
  variance pooled over all examples works better (``fix_variance``), which is our default.
"""

from __future__ import annotations

import numpy as np

from fedcare.core.errors import ConfigError, ValidationError

#: below this many shadow models the variance is pooled over examples (Carlini et al., §VI)
PER_EXAMPLE_VARIANCE_MIN_SHADOWS = 64


def loss_scores(losses: np.ndarray) -> np.ndarray:
    """Yeom et al.'s attack: lower loss -> more likely a member."""
    arr = np.asarray(losses, dtype=np.float64).reshape(-1)
    if not np.isfinite(arr).all():
        raise ValidationError("per-example losses contain NaN or Inf")
    return -arr


def balanced_membership(n_shadows: int, n_examples: int, seed: int) -> np.ndarray:
    """(n_shadows, n_examples) boolean: shadow k trains on example j. Every example is IN for
    exactly ``n_shadows // 2`` shadows (Carlini et al.'s assignment), so none lacks an IN or
    OUT group, and each shadow trains on about half of the examples."""
    if n_shadows < 2:
        raise ConfigError(f"LiRA needs at least 2 shadow models, got {n_shadows}")
    rng = np.random.default_rng(seed)
    order = rng.random((n_shadows, n_examples)).argsort(axis=0)
    return order < n_shadows // 2


def _gauss_logpdf(x: np.ndarray, mu: np.ndarray, sd: np.ndarray | float) -> np.ndarray:
    sd = np.maximum(sd, 1e-12)
    return -0.5 * ((x - mu) / sd) ** 2 - np.log(sd) - 0.5 * np.log(2 * np.pi)


def _group_stats(conf: np.ndarray, mask: np.ndarray,
                 pooled: bool) -> tuple[np.ndarray, np.ndarray | float]:
    counts = mask.sum(axis=0)
    if (counts == 0).any():
        raise ValidationError("every example needs at least one shadow model in each group")
    mu = np.where(mask, conf, 0.0).sum(axis=0) / counts
    resid = np.where(mask, conf - mu, 0.0)
    if pooled:
        dof = max(int(counts.sum()) - conf.shape[1], 1)
        return mu, float(np.sqrt((resid ** 2).sum() / dof))
    return mu, np.sqrt((resid ** 2).sum(axis=0) / np.maximum(counts - 1, 1))


def lira_scores(target_conf: np.ndarray, shadow_conf: np.ndarray, shadow_in: np.ndarray, *,
                online: bool = True, fix_variance: bool | None = None) -> np.ndarray:
    """LiRA scores from the target's and the shadows' logit-scaled confidences.

    ``shadow_conf`` and ``shadow_in`` are (shadows, examples); ``target_conf`` is (examples,).
    ``fix_variance`` defaults to pooling when there are fewer than 64 shadows.
    """
    tc = np.asarray(target_conf, dtype=np.float64).reshape(-1)
    sc = np.asarray(shadow_conf, dtype=np.float64)
    mask = np.asarray(shadow_in, dtype=bool)
    if sc.ndim != 2 or sc.shape != mask.shape or sc.shape[1] != tc.size:
        raise ValidationError(f"shadow confidences {sc.shape}, membership {mask.shape} and "
                              f"target confidences ({tc.size},) do not line up")
    if not (np.isfinite(tc).all() and np.isfinite(sc).all()):
        raise ValidationError("confidences contain NaN or Inf")
    pooled = (sc.shape[0] < PER_EXAMPLE_VARIANCE_MIN_SHADOWS if fix_variance is None
              else fix_variance)
    mu_out, sd_out = _group_stats(sc, ~mask, pooled)
    if not online:
        return (tc - mu_out) / np.maximum(sd_out, 1e-12)
    mu_in, sd_in = _group_stats(sc, mask, pooled)
    return _gauss_logpdf(tc, mu_in, sd_in) - _gauss_logpdf(tc, mu_out, sd_out)
