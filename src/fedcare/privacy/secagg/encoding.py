"""Fixed-point encoding of float vectors into Z_{2^k} and back (rule in :mod:`.config`)."""

from __future__ import annotations

import numpy as np

from fedcare.core.errors import ValidationError
from fedcare.privacy.secagg.config import SecAggConfig


def encode(x: np.ndarray, cfg: SecAggConfig, *, site: str | None = None) -> np.ndarray:
    """round(x·2^f) mod 2^k as ``cfg.dtype``; refuses non-finite values and |x| > clip.

    Out-of-range values are refused rather than clipped: silently clipping would corrupt e.g.
    an example-count element appended to the vector. Clip (and add DP noise) before this.
    """
    a = np.asarray(x)
    if a.shape != (cfg.vector_length,):
        raise ValidationError(f"secure-aggregation input must have shape "
                              f"({cfg.vector_length},), got {a.shape}", site=site)
    if a.dtype not in (np.float32, np.float64):
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_) \
                or np.issubdtype(a.dtype, np.complexfloating):
            raise ValidationError(f"secure-aggregation input must be real numbers, got "
                                  f"{a.dtype}", site=site)
        a = a.astype(np.float64)
    if a.size:
        lo, hi = float(a.min()), float(a.max())  # NaN propagates into both
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ValidationError("secure-aggregation input holds NaN or infinity", site=site)
        if lo < -cfg.clip or hi > cfg.clip:
            raise ValidationError(f"secure-aggregation input exceeds the clip range "
                                  f"±{cfg.clip} (min {lo}, max {hi}): clip it first or raise "
                                  f"clip", site=site)
    # x·2^f is exact in the input's own float type (a power-of-two scale), and so is rint;
    # |q| <= max_encoded < 2^(k-1) by the headroom rule, so the signed cast cannot overflow.
    q = np.multiply(a, a.dtype.type(2.0**cfg.frac_bits))
    np.rint(q, out=q)
    signed = np.int32 if cfg.mod_bits == 32 else np.int64
    return q.astype(signed).view(cfg.dtype)


def decode(total: np.ndarray, cfg: SecAggConfig) -> np.ndarray:
    """Signed reading of a sum in Z_{2^k}, divided by 2^f, as float64."""
    signed = total.view(np.int32 if cfg.mod_bits == 32 else np.int64)
    return signed.astype(np.float64) / 2.0**cfg.frac_bits
