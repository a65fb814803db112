"""The two halves of DP-FedAvg as pure functions the engine calls (McMahan et al. 2018).

* Site side, after local training: :func:`privatize_update` turns the trained model into a
  clipped (and, for distributed noise, noised) **delta** ``w_site - w_global``. A delta and
  not a full model because the clip bound is a bound on the delta, because secure aggregation
  and quantization work on small centred values, and because the hub's mean must be the
  uniform mean of clipped deltas added to the global model - which
  ``UpdateStack.average(uniform=True)`` plus ``UpdateKind.DELTA`` computes exactly.
* Hub side, on the sum (or uniform mean) of clipped deltas: :func:`central_noise` /
  :func:`noisy_sum` (discrete Gaussian on the secure-aggregation grid).

See :mod:`fedcare.privacy.dp.mechanisms` for the threat model of each noise placement.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, overload

import numpy as np

from fedcare.core.errors import ConfigError
from fedcare.core.params import Parameters
from fedcare.privacy.dp import discrete_gaussian as dg
from fedcare.privacy.dp.mechanisms import (
    DEFAULT_FRAC_BITS,
    clip_update,
    distributed_noise_std,
    privatize_on_grid,
    subtract,
)
from fedcare.privacy.dp.spec import Mechanism, PrivacySpec


@dataclass(frozen=True)
class PrivatizeInfo:
    """What :func:`privatize_update` did. **Site-local**: ``pre_clip_norm`` and ``clipped``
    depend on the data and are not protected by DP, so they must not travel to the hub
    (log them at the site, not in ``Update.metrics``)."""

    pre_clip_norm: float
    clipped: bool
    noise_std: float


def _require_fedavg(spec: PrivacySpec) -> None:
    if not spec.mechanism.is_dp_fedavg:
        raise ConfigError(f"privacy.mode {spec.mechanism.value!r} is not DP-FedAvg; the "
                          "DP-FedAvg hooks apply to dp_fedavg_central/dp_fedavg_distributed")


def _check_sites(n_sites: int) -> None:
    if isinstance(n_sites, bool) or not isinstance(n_sites, int) or n_sites < 1:
        raise ConfigError(f"n_sites must be an integer >= 1, got {n_sites!r}")


def privatize_update(global_params: Parameters, site_params: Parameters, spec: PrivacySpec,
                     n_sites: int, rng: np.random.Generator | None = None, *,
                     frac_bits: int = DEFAULT_FRAC_BITS, keep_float64: bool = False
                     ) -> tuple[Parameters, PrivatizeInfo]:
    """Site side of DP-FedAvg: clip ``site_params - global_params`` to ``spec.clip``, round it
    onto the grid ``2^-frac_bits`` (norm still <= clip) and, for ``dp_fedavg_distributed``,
    add a discrete Gaussian share N_Z(0, (z C)^2 / n_sites) on that grid.

    Returns the DELTA (send it as ``UpdateKind.DELTA``) and site-local info. ``n_sites`` is
    the number of sites sampled this round (all of which must answer for the sum to carry
    the full noise). ``keep_float64`` returns the exact grid values (for secure aggregation,
    which encodes them without rounding); otherwise each array keeps its dtype.
    ``rng=None`` uses the OS CSPRNG.
    """
    _require_fedavg(spec)
    _check_sites(n_sites)
    clipped, norm = clip_update(subtract(site_params, global_params), spec.clip)
    std, z = 0.0, 0.0
    if spec.mechanism is Mechanism.DP_FEDAVG_DISTRIBUTED:
        std = distributed_noise_std(spec.clip, spec.noise_multiplier, n_sites)
        z = spec.noise_multiplier
    out = privatize_on_grid(clipped, spec.clip, frac_bits, noise_multiplier=z, shares=n_sites,
                            rng=rng, keep_float64=keep_float64)
    return out, PrivatizeInfo(pre_clip_norm=norm, clipped=norm > spec.clip, noise_std=std)


def noisy_sum(total: np.ndarray, spec: PrivacySpec, rng: np.random.Generator | None = None,
              *, frac_bits: int = DEFAULT_FRAC_BITS) -> np.ndarray:
    """``total`` (the sum of clipped, grid-rounded deltas) snapped to the grid, plus discrete
    Gaussian N_Z(0, (z C 2^f)^2) steps: float64, exact. Snapping is the identity for a sum of
    grid values; it makes the result a function of the noisy sum alone even if a site sent
    off-grid values (so no low bit of the noiseless sum survives)."""
    k = dg.to_grid(total, frac_bits)
    variance = dg.grid_variance(spec.noise_multiplier, spec.clip, frac_bits)
    return dg.from_grid(k + dg.grid_noise(k.shape, variance, rng), frac_bits)


@overload
def central_noise(values: np.ndarray, spec: PrivacySpec, n_sites: int,
                  rng: np.random.Generator | None = ..., *,
                  values_are: Literal["sum", "mean"] = ..., frac_bits: int = ...
                  ) -> np.ndarray: ...


@overload
def central_noise(values: Mapping[str, np.ndarray], spec: PrivacySpec, n_sites: int,
                  rng: np.random.Generator | None = ..., *,
                  values_are: Literal["sum", "mean"] = ..., frac_bits: int = ...
                  ) -> Parameters: ...


def central_noise(values: np.ndarray | Mapping[str, np.ndarray], spec: PrivacySpec,
                  n_sites: int, rng: np.random.Generator | None = None, *,
                  values_are: Literal["sum", "mean"] = "sum",
                  frac_bits: int = DEFAULT_FRAC_BITS) -> np.ndarray | Parameters:
    """Hub side of central DP-FedAvg: the noisy UNIFORM MEAN of the sites' clipped deltas.

    ``values`` is the sum of the ``n_sites`` clipped deltas (``values_are="sum"``) or their
    uniform mean (``"mean"``; then the noise std is divided by ``n_sites`` too, which is the
    same distribution). The noise is discrete Gaussian on the grid ``2^-frac_bits``, added to
    the grid-snapped sum in exact arithmetic (:func:`noisy_sum`) before dividing. Works on a
    flat vector (``UpdateStack.average(uniform=True)``) or on named arrays. For
    ``dp_fedavg_distributed`` the sites added the noise already: this refuses, so noise is
    never added twice by mistake.
    """
    _require_fedavg(spec)
    _check_sites(n_sites)
    if spec.mechanism is not Mechanism.DP_FEDAVG_CENTRAL:
        raise ConfigError("privacy.mode is dp_fedavg_distributed: the sites add the noise, "
                          "the hub must only average")
    if values_are not in ("sum", "mean"):
        raise ConfigError(f"values_are must be 'sum' or 'mean', got {values_are!r}")
    scale = n_sites if values_are == "mean" else 1
    if isinstance(values, np.ndarray):
        total = values.astype(np.float64) * scale
        return (noisy_sum(total, spec, rng, frac_bits=frac_bits) / n_sites).astype(values.dtype)
    names = list(values)
    flat = np.concatenate([np.asarray(values[k], dtype=np.float64).reshape(-1) * scale
                           for k in names]) if names else np.empty(0)
    noisy = noisy_sum(flat, spec, rng, frac_bits=frac_bits) / n_sites
    out: dict[str, np.ndarray] = {}
    pos = 0
    for k in names:
        a = np.asarray(values[k])
        out[k] = noisy[pos:pos + a.size].reshape(a.shape).astype(a.dtype)
        pos += a.size
    return Parameters(out)
