"""DP mechanisms as pure named steps: clip, noise, and the two halves of DP-FedAvg.

Every step returns new arrays (inputs are never written) and draws its noise from a
cryptographically secure source unless a seeded :class:`numpy.random.Generator` is passed
explicitly - which is for tests and reproducible simulations only.

DP-FedAvg (McMahan, Ramage, Talwar, Zhang, "Learning Differentially Private Recurrent Language
Models", ICLR 2018): each site clips its update ``delta = w_site - w_global`` to L2 norm ``C``;
the sum of clipped deltas then changes by at most ``C`` when one site is added or removed, so
Gaussian noise N(0, (z C)^2) on the sum gives site-level DP. The mean is the noisy sum divided
by the number of sites, **uniformly weighted**: weighting by row counts would let one large
site move the mean by more than ``C / n`` and break that sensitivity bound (and the row counts
themselves are not protected). Dividing by the (public, fixed-size) number of sampled sites is
post-processing. Two placements of the noise:

* **central** - the hub adds the noise to the sum. The released model is protected; the hub
  itself sees the noiseless sum (and, without secure aggregation, every clipped update).
* **distributed** - each of ``n`` sites adds N(0, (z C)^2 / n), so the sum of ``n`` updates
  carries N(0, (z C)^2). Designed for secure aggregation, where the hub only sees the sum.
  **Without secure aggregation the hub sees each update with only 1/sqrt(n) of the noise**:
  against the hub each site then has noise multiplier ``z / sqrt(n)`` (see
  :func:`effective_noise_multiplier`), and if fewer than ``n`` sites answer, the sum carries
  less than the full noise.

Noise is a **discrete Gaussian on the fixed-point grid** ``2^-frac_bits`` that secure
aggregation uses (:mod:`fedcare.privacy.dp.discrete_gaussian`; Canonne, Kamath, Steinke 2020),
never a floating-point Gaussian, which Mironov (CCS 2012) showed leaks the input through the
low bits of the result. The clipped update is first rounded onto the grid with its L2 norm
still at most ``C`` (:func:`~fedcare.privacy.dp.discrete_gaussian.round_to_grid`), then the
noise is added in exact integer grid steps; float casts happen only afterwards (post-
processing). Distributed noise gives each site a discrete Gaussian share of variance
``(z C)^2 / n``: the sum of discrete Gaussians is not exactly one, and the accountant is given
the Kairouz-Liu-Steinke 2021 bound for it
(:func:`fedcare.privacy.dp.accounting.discrete_noise_multiplier`).

DP-SGD is not covered: its per-step noise is drawn inside Opacus with ``torch.normal``, in
floating point (generator seeded from :mod:`secrets`, see ``DpSgdOptions``). Opacus'
``secure_mode`` (a CSPRNG plus an average of Gaussian draws against the floating-point attack,
Holohan & Braghin 2021) needs ``torchcsprng``, whose last release (0.2.1, March 2021) ships
wheels for CPython 3.6-3.9 only and no source: ``pip download --no-deps torchcsprng`` finds no
installable file for fedcare's Python 3.11 / torch 2.x. What mitigates it: a noised gradient
never leaves the site; only the model after many steps does (under secure aggregation, only
the sum of the sites' models), so Mironov's attack, which reads the low bits of one noised
value, does not apply directly - but DP-SGD lacks the exactness argument DP-FedAvg has.

Assumption: the clip bound holds only if the site runs this code unmodified.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fedcare.core.errors import ConfigError, ValidationError
from fedcare.core.params import Parameters
from fedcare.privacy.dp import discrete_gaussian as dg
from fedcare.privacy.dp.spec import check_finite_number

#: Fractional bits of the noise grid when none is given: ``secure_aggregation.frac_bits``'s
#: default, so noised updates encode for secure aggregation without rounding.
DEFAULT_FRAC_BITS = 24


def gaussian_noise(shape: tuple[int, ...] | int, std: float,
                   rng: np.random.Generator | None = None, *,
                   frac_bits: int = DEFAULT_FRAC_BITS, shares: int = 1) -> np.ndarray:
    """Discrete Gaussian noise of ``shape``: float64 values ``k * 2^-frac_bits`` with
    ``k ~ N_Z(0, (std 2^f)^2 / shares)`` (one of ``shares`` equal shares of N(0, std^2)).

    Exact integer sampling (CKS20), so every value is an exact multiple of the grid step.
    ``rng=None`` (the default) draws from the OS CSPRNG; pass a seeded generator only in tests
    and simulations that must be reproducible - its stream is predictable.
    """
    problems = check_finite_number(std, "std", non_negative=True)
    if problems:
        raise ConfigError(problems)
    variance = dg.grid_variance(1.0, std, frac_bits, shares)
    return dg.from_grid(dg.grid_noise(shape, variance, rng), frac_bits)


def _check_clip(clip: float) -> None:
    problems = check_finite_number(clip, "privacy.clip", positive=True)
    if problems:
        raise ConfigError(problems)


def l2_norm(arrays: Mapping[str, np.ndarray]) -> float:
    """L2 norm of all values of all arrays taken as one flat vector, in float64."""
    total = 0.0
    for arr in arrays.values():
        flat = np.asarray(arr, dtype=np.float64).reshape(-1)
        total += float(np.dot(flat, flat))
    return math.sqrt(total)


def clip_update(delta: Mapping[str, np.ndarray], clip: float) -> tuple[Parameters, float]:
    """Scale ``delta`` so its L2 norm over the whole flat update is at most ``clip``.

    Returns (new parameters, norm before clipping). A zero update is returned unchanged
    (no division by a zero norm); 0-d arrays count like any other value. Non-finite values
    are refused: a NaN would pass through any clip and poison the sum.
    """
    _check_clip(clip)
    bad = [k for k, v in delta.items() if np.asarray(v).size and not np.isfinite(v).all()]
    if bad:
        raise ValidationError(f"update contains NaN or Inf in {bad}; refusing to clip it")
    norm = l2_norm(delta)
    scale = clip / norm if norm > clip else 1.0
    out = {k: (np.asarray(v, dtype=np.float64) * scale).astype(np.asarray(v).dtype)
           for k, v in delta.items()}
    return Parameters(out), norm


def privatize_on_grid(arrays: Mapping[str, np.ndarray], clip: float, frac_bits: int, *,
                      noise_multiplier: float = 0.0, shares: int = 1,
                      rng: np.random.Generator | None = None, keep_float64: bool = False
                      ) -> Parameters:
    """Round clipped ``arrays`` onto the grid ``2^-frac_bits`` keeping their joint L2 norm
    <= ``clip`` exactly, then (``noise_multiplier > 0``) add one of ``shares`` discrete
    Gaussian shares of N_Z(0, (z C 2^f)^2) - all in exact integer grid steps.

    The result is float64 (``keep_float64``: exact grid values, what secure aggregation
    should encode) or each array's own dtype, cast with magnitudes rounded toward zero so a
    coarser float never raises the norm and stays on the grid.
    """
    names = list(arrays)
    flat = (np.concatenate([np.asarray(arrays[k], dtype=np.float64).reshape(-1) for k in names])
            if names else np.empty(0))
    k = dg.round_to_grid(flat, clip, frac_bits)
    if noise_multiplier > 0:
        k = k + dg.grid_noise(k.shape, dg.grid_variance(noise_multiplier, clip, frac_bits,
                                                        shares), rng)
    exact = dg.grid_noised(arrays, k, frac_bits)
    if keep_float64:
        return Parameters(exact)
    return Parameters({n: dg.cast_toward_zero(exact[n], np.asarray(arrays[n]).dtype)
                       for n in names})


def subtract(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> Parameters:
    """``a - b`` per name (same names, order and shapes required)."""
    if list(a) != list(b) or any(np.shape(a[k]) != np.shape(b[k]) for k in a):
        raise ValidationError("cannot subtract parameters with different layouts")
    return Parameters({k: np.asarray(a[k]) - np.asarray(b[k]) for k in a})


def distributed_noise_std(clip: float, noise_multiplier: float, n_sites: int) -> float:
    """Per-site noise std so that the sum over ``n_sites`` has std ``noise_multiplier * clip``."""
    _check_clip(clip)
    problems = check_finite_number(noise_multiplier, "privacy.noise_multiplier",
                                   non_negative=True)
    if isinstance(n_sites, bool) or not isinstance(n_sites, int) or n_sites < 1:
        problems.append(f"n_sites must be an integer >= 1, got {n_sites!r}")
    if problems:
        raise ConfigError(problems)
    return noise_multiplier * clip / math.sqrt(n_sites)


def effective_noise_multiplier(noise_multiplier: float, n_sites: int, *,
                               distributed: bool, secure_aggregation: bool) -> float:
    """The noise multiplier protecting one site *against the hub*.

    Central noise is added by the hub, so against the hub it is 0. Distributed noise under
    secure aggregation: the hub sees only the sum, which carries ``noise_multiplier``.
    Distributed noise without secure aggregation: each update carries ``z / sqrt(n)``.
    """
    if not distributed:
        return 0.0
    if secure_aggregation:
        return noise_multiplier
    return noise_multiplier / math.sqrt(n_sites)
