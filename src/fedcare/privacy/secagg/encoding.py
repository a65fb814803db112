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
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)
            or a.dtype == np.bool_):
        raise ValidationError(f"secure-aggregation input must be numeric, got {a.dtype}",
                              site=site)
    a = a.astype(np.float64, copy=False)
    if a.size and not np.isfinite(a).all():
        raise ValidationError("secure-aggregation input holds NaN or infinity", site=site)
    if a.size and float(np.abs(a).max()) > cfg.clip:
        raise ValidationError(f"secure-aggregation input exceeds the clip range "
                              f"±{cfg.clip} (max |x| = {float(np.abs(a).max())}): clip it "
                              f"first or raise clip", site=site)
    q = np.rint(a * 2.0**cfg.frac_bits).astype(np.int64)
    return q.view(np.uint64).astype(cfg.dtype) if cfg.mod_bits == 32 else q.view(cfg.dtype)


def decode(total: np.ndarray, cfg: SecAggConfig) -> np.ndarray:
    """Signed reading of a sum in Z_{2^k}, divided by 2^f, as float64."""
    signed = total.view(np.int32 if cfg.mod_bits == 32 else np.int64)
    return signed.astype(np.float64) / 2.0**cfg.frac_bits
