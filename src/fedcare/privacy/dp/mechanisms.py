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

Assumptions: noise is sampled in floating point (the Mironov 2012 floating-point attack on
textbook samplers is not mitigated; a discrete Gaussian would be), and the clip bound holds
only if the site runs this code unmodified.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import numpy as np

from fedcare.core.errors import ConfigError, ValidationError
from fedcare.core.params import Parameters
from fedcare.privacy.dp.spec import check_finite_number

#: Bytes of ``os.urandom`` drawn per call (bounded so a large model does not make one huge
#: allocation of random bytes).
_URANDOM_CHUNK = 1 << 20


def _secure_uniform(size: int) -> np.ndarray:
    """``size`` uniforms in the open interval (0, 1) with 53 random bits each, from
    ``os.urandom`` (the operating system's CSPRNG)."""
    out = np.empty(size, dtype=np.float64)
    per_chunk = _URANDOM_CHUNK // 8
    for start in range(0, size, per_chunk):
        k = min(per_chunk, size - start)
        bits = np.frombuffer(os.urandom(8 * k), dtype=np.uint64) >> np.uint64(11)
        out[start:start + k] = (bits.astype(np.float64) + 0.5) * 2.0 ** -53
    return out


def secure_standard_normal(size: int) -> np.ndarray:
    """``size`` N(0, 1) samples from ``os.urandom`` via the Box-Muller transform.

    numpy has no cryptographically secure bit generator, and a PCG/Philox stream is
    predictable to anyone who learns its state; the operating system's CSPRNG is not.
    """
    if size == 0:
        return np.empty(0, dtype=np.float64)
    pairs = (size + 1) // 2
    u = _secure_uniform(2 * pairs)
    radius = np.sqrt(-2.0 * np.log(u[:pairs]))
    angle = 2.0 * np.pi * u[pairs:]
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:size]


def gaussian_noise(shape: tuple[int, ...] | int, std: float,
                   rng: np.random.Generator | None = None) -> np.ndarray:
    """N(0, std^2) noise of ``shape`` (float64).

    ``rng=None`` (the default) draws from the OS CSPRNG; pass a seeded generator only in tests
    and simulations that must be reproducible - its stream is predictable.
    """
    problems = check_finite_number(std, "std", non_negative=True)
    if problems:
        raise ConfigError(problems)
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    if any(d < 0 for d in dims):
        raise ConfigError(f"noise shape must not have negative sizes, got {dims}")
    size = math.prod(dims)
    z = secure_standard_normal(size) if rng is None else rng.standard_normal(size)
    return (z * std).reshape(dims)


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


def add_noise(arrays: Mapping[str, np.ndarray], std: float,
              rng: np.random.Generator | None = None) -> Parameters:
    """``arrays`` + independent N(0, std^2) per value, computed in float64, cast back."""
    out = {}
    for k, v in arrays.items():
        a = np.asarray(v)
        out[k] = (a.astype(np.float64) + gaussian_noise(a.shape, std, rng)).astype(a.dtype)
    return Parameters(out)


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
