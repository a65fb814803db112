"""Exact discrete Gaussian noise on the fixed-point grid ``2^-frac_bits``.

Why not floats
--------------
Mironov ("On Significance of the Least Significant Bits for Differential Privacy", CCS 2012)
showed that ``x + N(0, s^2)`` computed in floating point leaks ``x``: the set of doubles a
textbook sampler can output, shifted by ``x``, depends on ``x``'s low bits, so a single
release can tell neighbouring inputs apart. The fix used here is the one of Canonne, Kamath
and Steinke ("The Discrete Gaussian for Differential Privacy", NeurIPS 2020; CKS20): put the
value on a grid ``g = 2^-frac_bits`` first (see :func:`round_to_grid`), then add
``k * g`` with ``k ~ N_Z(0, (sigma / g)^2)`` drawn *exactly* with integer arithmetic. Every
release is then an exact integer multiple of ``g``; its support is ``g * Z`` whatever the
input, and the arithmetic that produces it is exact (integers below 2^53), so no low bit
depends on the data. Secure aggregation already encodes values on this grid
(:mod:`fedcare.privacy.secagg.encoding`), so a noised update encodes without any rounding.

The sampler
-----------
CKS20 Algorithm 3: propose ``Y`` from the discrete Laplace distribution with integer scale
``t = floor(sigma) + 1`` (their Algorithm 2) and accept it with probability
``exp(-(|Y| - sigma^2/t)^2 / (2 sigma^2))``; accepted values are exactly N_Z(0, sigma^2).
The randomness is a ChaCha20 keystream keyed by ``os.urandom`` (:class:`RandomWords`), or a
seeded numpy generator in tests only.

Every Bernoulli(exp(-gamma)) is decided *exactly* by :func:`bernoulli_exp_neg`: a uniform
``V`` in [0, 1) is compared with ``p = exp(-gamma)``. A float64 estimate of ``p`` with a
certified error bound decides whenever the 53 leading bits of ``V`` lie outside that bound
(all but ~1e-11 of the draws); otherwise more bits of the *same* ``V`` are drawn and ``p`` is
recomputed with correctly rounded :mod:`decimal` arithmetic until the comparison is decided.
The outcome therefore has probability exactly ``p`` - the float estimate only makes it fast.
Everything else is integer arithmetic, vectorised with numpy (0.3-0.6 s per million values
here, 10-25x a float sampler; ``benchmarks/discrete_gaussian.py``).

Library check (December 2026): OpenDP 0.16 (``make_gaussian`` on integer vectors, behind its
"contrib" flag) is exact too but took 13-24 s per million values here, too slow for
model-sized noise every round; diffprivlib's ``GaussianDiscrete`` is a scalar mechanism (one
Python value per call); TensorFlow Privacy's sampler needs TensorFlow; Opacus has none. Hence
this hand-written, vectorised implementation.
"""

from __future__ import annotations

import decimal
import math
import operator
import os
from collections.abc import Callable, Mapping
from fractions import Fraction

import numpy as np

from fedcare.core.errors import ConfigError, ValidationError

#: Largest integer magnitude used on the grid: |k| < 2^53 keeps ``k * 2^-f`` and every sum of
#: a value and its noise exact in float64.
MAX_GRID_INT = 2**53
#: Largest discrete Laplace scale ``t`` (so ``U + t*V`` stays far inside int64).
_MAX_SCALE = 2**50
#: Words per keystream call (8 MiB): bounds one allocation of random bytes.
_CHUNK_WORDS = 1 << 20
_U53 = 2.0**-53
_FLOAT_EPS = 2.0**-52


class RandomWords:
    """Uniform 64-bit words from a cryptographically secure source, or from a seeded
    :class:`numpy.random.Generator` - predictable, so for tests and reproducible simulations
    only.

    The secure source is ChaCha20 (``cryptography``) keyed with 32 bytes of ``os.urandom``:
    the construction the Linux kernel's own CSPRNG uses, and 2-3x faster here than asking the
    kernel for every byte (the sampler needs ~80 random bytes per value).
    """

    def __init__(self, rng: np.random.Generator | None = None) -> None:
        self._rng = rng
        self._stream = None
        if rng is None:
            from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

            self._stream = Cipher(algorithms.ChaCha20(os.urandom(32), os.urandom(16)),
                                  mode=None).encryptor()

    def words(self, n: int) -> np.ndarray:
        """``n`` independent uniform uint64 values."""
        if self._stream is None:
            assert self._rng is not None
            return np.frombuffer(self._rng.bytes(8 * n), dtype=np.uint64).copy()
        out = np.empty(n, dtype=np.uint64)
        raw = out.view(np.uint8)
        zeros = bytes(8 * min(n, _CHUNK_WORDS))
        for start in range(0, n, _CHUNK_WORDS):
            k = min(_CHUNK_WORDS, n - start)
            # The keystream (ChaCha20 of zeros) is written straight into ``out``.
            self._stream.update_into(zeros[:8 * k], raw[8 * start:8 * (start + k)].data)
        return out

    def bits(self, n: int) -> np.ndarray:
        """``n`` fair bits as a bool array (64 per word)."""
        words = self.words((n + 63) // 64)
        return np.unpackbits(words.view(np.uint8))[:n].astype(bool)

    def below(self, bound: int, n: int) -> np.ndarray:
        """``n`` exactly uniform integers in ``[0, bound)`` (int64), by rejection: words at or
        above the largest multiple of ``bound`` that fits in 64 bits are drawn again, so
        ``word % bound`` has no modulo bias."""
        if not 1 <= bound <= 2**62:
            raise ValueError(f"bound must be in [1, 2^62], got {bound}")
        limit = np.uint64((2**64 // bound) * bound - 1)  # accept words <= limit
        w = self.words(n)
        bad = np.flatnonzero(w > limit)  # probability < bound / 2^64 each
        while bad.size:
            w[bad] = self.words(bad.size)
            bad = bad[w[bad] > limit]
        return (w % np.uint64(bound)).astype(np.int64)


# -- Bernoulli(exp(-gamma)), exact --------------------------------------------------------------
def bernoulli_exp_neg(gamma: np.ndarray, gamma_err: np.ndarray | float,
                      exact_gamma: Callable[[int], Fraction], source: RandomWords
                      ) -> np.ndarray:
    """One Bernoulli(exp(-gamma_i)) per element, decided exactly.

    ``gamma`` is a float64 estimate of the true (rational) ``gamma_i >= 0`` with
    ``|gamma_i - estimate_i| <= gamma_err_i`` (the caller certifies the bound), and
    ``exact_gamma(i)`` returns the true value, used only in the rare undecided case (see the
    module docstring): the result is exact for any valid error bound, the bound only decides
    how often the slow path runs.
    """
    g = np.asarray(gamma, dtype=np.float64)
    err = np.asarray(gamma_err, dtype=np.float64)
    p = np.exp(-g)
    # |exp(-gamma) - exp(-g)| <= exp(-g) (e^err - 1) <= p * 2 err for err <= 1; numpy's exp is
    # within a few ulps (2^-48 covers it); the absolute term covers subnormal/underflowed p.
    slack = p * (2.0 * np.minimum(err, 1.0) + 2.0**-48) + 2.0**-1000
    words = source.words(g.size) >> np.uint64(11)  # the leading 53 bits of V
    v_lo = words.astype(np.float64) * _U53  # exact: V lies in [v_lo, v_lo + 2^-53)
    accept = v_lo + _U53 <= p - slack
    undecided = ~accept & (v_lo < p + slack)
    if np.any(err >= 1.0):  # a larger bound says nothing: decide those exactly
        useless = np.broadcast_to(err >= 1.0, g.shape)
        accept &= ~useless
        undecided |= useless
    for i in np.flatnonzero(undecided):
        accept[i] = _exact_compare(int(words[i]), 53, exact_gamma(int(i)), source)
    return accept


def _exact_compare(prefix: int, nbits: int, gamma: Fraction, source: RandomWords) -> bool:
    """Is ``V < exp(-gamma)``, where ``V`` is uniform with leading bits ``prefix``
    (``nbits`` of them)? Refines ``V`` (fresh bits) and ``exp(-gamma)`` (more digits) until
    the two intervals separate - with probability 1, since exp(-gamma) is irrational for
    rational gamma > 0 (gamma = 0: p = 1 > V always)."""
    if gamma == 0:
        return True
    digits = 40 + int(math.log10(float(gamma) + 1.0))
    while True:
        with decimal.localcontext() as ctx:
            ctx.prec = digits
            ctx.Emin, ctx.Emax = -(10**9), 10**9
            approx = (-(decimal.Decimal(gamma.numerator)
                        / decimal.Decimal(gamma.denominator))).exp()
        # The quotient and exp() are each correctly rounded (relative error <= 10^(1-prec)),
        # so |approx / exp(-gamma) - 1| <= (2 gamma + 2) 10^(1-prec); widened 100x.
        r = Fraction(2 * gamma + 2) * Fraction(1, 10 ** (digits - 3))
        p = Fraction(approx)
        p_lo, p_hi = p * (1 - r), p * (1 + r)
        v_lo = Fraction(prefix, 2**nbits)
        if v_lo + Fraction(1, 2**nbits) <= p_lo:
            return True
        if v_lo >= p_hi:
            return False
        prefix = (prefix << 64) | int(source.words(1)[0])
        nbits += 64
        digits += 20


# -- discrete Laplace and discrete Gaussian --------------------------------------------------------
def _ratio(u: np.ndarray, t: int) -> Callable[[int], Fraction]:
    return lambda i: Fraction(int(u[i]), t)


def discrete_laplace(t: int, size: int, source: RandomWords) -> np.ndarray:
    """``size`` samples with P(Y = y) proportional to exp(-|y| / t) (CKS20 Algorithm 2 with
    s = 1), as int64."""
    if not 1 <= t <= _MAX_SCALE:
        raise ValueError(f"discrete Laplace scale must be in [1, 2^50], got {t}")
    out = np.empty(size, dtype=np.int64)
    filled = 0
    while filled < size:
        m = max(16, int((size - filled) * 1.8))
        u = source.below(t, m)
        gu = u.astype(np.float64) / t  # correctly rounded: error <= 2^-53 gu
        keep = bernoulli_exp_neg(gu, gu * _FLOAT_EPS, _ratio(u, t), source)
        u = u[keep]
        v = np.zeros(u.size, dtype=np.int64)  # V ~ Geometric: count Bernoulli(e^-1) successes
        active = np.arange(u.size)
        while active.size:
            hit = bernoulli_exp_neg(np.ones(active.size), 0.0, lambda i: Fraction(1), source)
            active = active[hit]
            v[active] += 1
        negative = source.bits(u.size)
        x = u + t * v
        ok = ~(negative & (x == 0))  # -0 is rejected, or 0 would be counted twice
        y = np.where(negative, -x, x)[ok]
        take = min(y.size, size - filled)
        out[filled:filled + take] = y[:take]
        filled += take
    return out


def _as_fraction(variance: Fraction | float | int) -> Fraction:
    if isinstance(variance, bool) or not isinstance(variance, (Fraction, float, int)):
        raise ConfigError(f"discrete Gaussian variance must be a number, got {variance!r}")
    if isinstance(variance, float) and not math.isfinite(variance):
        raise ConfigError(f"discrete Gaussian variance must be finite, got {variance!r}")
    v = Fraction(variance)
    if v < 0:
        raise ConfigError(f"discrete Gaussian variance must be >= 0, got {variance!r}")
    return v


def sample_discrete_gaussian(variance: Fraction | float | int, size: int,
                             rng: np.random.Generator | None = None) -> np.ndarray:
    """``size`` exact samples of N_Z(0, variance): P(k) proportional to
    exp(-k^2 / (2 variance)) on the integers (CKS20 Algorithm 3), as int64.

    ``variance`` is taken exactly (a :class:`~fractions.Fraction`, int or float).
    ``rng=None`` draws from ``os.urandom``; a seeded generator is for tests only.
    """
    s = _as_fraction(variance)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ConfigError(f"size must be an integer >= 0, got {size!r}")
    if s == 0 or size == 0:
        return np.zeros(size, dtype=np.int64)
    t = math.isqrt(s.numerator * s.denominator) // s.denominator + 1  # floor(sigma) + 1
    if t > _MAX_SCALE:
        raise ConfigError(f"discrete Gaussian std {math.sqrt(s):.3g} is too large for exact "
                          "int64 sampling (max 2^50 grid steps): lower frac_bits")
    source = RandomWords(rng)
    s_float, shift = float(s), float(s / t)  # each within 2^-53 relative of the exact value
    out = np.empty(size, dtype=np.int64)
    filled = 0
    while filled < size:
        m = max(16, int((size - filled) * 1.5))
        y = discrete_laplace(t, m, source)
        a = np.abs(y).astype(np.float64)  # exact (|y| < 2^53)
        d = a - shift
        gamma = d * d / (2.0 * s_float)
        # Error of the float estimate: shift and d are off by <= 3u(a + shift), the square by
        # (2|d| + e1) e1 plus its rounding, the division by a few more roundings.
        e1 = 3 * _FLOAT_EPS * (a + shift)
        err = 1.01 * (2 * np.abs(d) + e1) * e1 / (2.0 * s_float) + 8 * _FLOAT_EPS * gamma

        def exact(i: int, y: np.ndarray = y) -> Fraction:
            return (abs(int(y[i])) - s / t) ** 2 / (2 * s)

        y = y[bernoulli_exp_neg(gamma, err, exact, source)]
        take = min(y.size, size - filled)
        out[filled:filled + take] = y[:take]
        filled += take
    return out


# -- the fixed-point grid --------------------------------------------------------------------------
def check_frac_bits(frac_bits: int) -> None:
    if isinstance(frac_bits, bool) or not isinstance(frac_bits, int) or not 0 <= frac_bits <= 52:
        raise ConfigError(f"frac_bits must be an integer in [0, 52], got {frac_bits!r}")


def grid_variance(noise_multiplier: float, clip: float, frac_bits: int,
                  shares: int = 1) -> Fraction:
    """Exact variance, in grid steps, of one of ``shares`` equal noise shares whose sum has
    std ``noise_multiplier * clip``: ``(z C 2^f)^2 / shares``. Exact (no float rounding of
    ``z * C`` or of a square root), so the sampled noise is never below what the accountant
    assumes."""
    check_frac_bits(frac_bits)
    if isinstance(shares, bool) or not isinstance(shares, int) or shares < 1:
        raise ConfigError(f"noise shares must be an integer >= 1, got {shares!r}")
    return (Fraction(noise_multiplier) * Fraction(clip) * 2**frac_bits) ** 2 / shares


def grid_noise(shape: tuple[int, ...] | int, variance: Fraction,
               rng: np.random.Generator | None = None) -> np.ndarray:
    """Discrete Gaussian noise in *grid steps* (int64) of ``shape``."""
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    if any(d < 0 for d in dims):
        raise ConfigError(f"noise shape must not have negative sizes, got {dims}")
    return sample_discrete_gaussian(variance, math.prod(dims), rng).reshape(dims)


def _exact_sq_norm(k: np.ndarray) -> int:
    """Exact sum of squares of an int64 vector.

    In float64 when every square is below 2^53 and the total comes out below 2^52: the terms
    are non-negative, so every partial sum (in whatever order or blocking BLAS uses) is then an
    integer below 2^53, where doubles are exact. Python integers otherwise.
    """
    if k.size == 0:
        return 0
    if int(np.abs(k).max()) < 2**26:
        f = k.astype(np.float64)
        total = float(np.dot(f, f))
        if total < 2.0**52:
            return int(total)
    values = k.tolist()
    return sum(map(operator.mul, values, values))


def round_to_grid(flat: np.ndarray, clip: float, frac_bits: int) -> np.ndarray:
    """Grid steps ``k`` (int64) nearest to ``flat * 2^f`` with ``||k||_2 <= clip * 2^f``
    EXACTLY, for a vector already clipped to L2 norm ``clip`` (in floating point).

    Rounding to nearest can add up to ``sqrt(d)/2`` grid steps to the norm; when it does
    exceed the bound, the vector is scaled down and rounded *toward zero* instead, which never
    increases any coordinate's magnitude, and checked again with exact integer arithmetic. So
    the L2 sensitivity of a site's contribution stays exactly ``clip``, with no rounding term
    for the accountant (instead of Kairouz et al.'s randomized rounding with a high-probability
    bound, or inflating the sensitivity to ``clip + sqrt(d)/2 * 2^-f``). The fallback biases
    the affected coordinates toward zero by less than one grid step.
    """
    check_frac_bits(frac_bits)
    x = np.asarray(flat, dtype=np.float64).reshape(-1)
    if x.size and not np.isfinite(x).all():
        raise ValidationError("update contains NaN or Inf; refusing to put it on the grid")
    bound = Fraction(clip) * 2**frac_bits
    if bound.numerator >= MAX_GRID_INT * bound.denominator:
        raise ConfigError(f"clip {clip} x 2^{frac_bits} grid steps exceeds 2^53: lower "
                          "frac_bits or clip")
    bound_sq = bound * bound
    scaled = x * 2.0**frac_bits  # exact (power of two)
    k = np.rint(scaled).astype(np.int64)
    if _exact_sq_norm(k) <= bound_sq:
        return k
    shrink = 1.0
    while True:
        k = np.trunc(scaled * shrink).astype(np.int64)
        sq = _exact_sq_norm(k)
        if sq <= bound_sq:
            return k
        # Only when the float clip itself overshot (e.g. by the cast to float32).
        shrink *= min(1.0 - 2.0**-40, math.sqrt(float(bound_sq / sq)))


def from_grid(k: np.ndarray, frac_bits: int) -> np.ndarray:
    """``k * 2^-f`` as float64 - exact for |k| < 2^53, which is refused otherwise."""
    if k.size and int(np.abs(k).max()) >= MAX_GRID_INT:
        raise ValidationError("a noised value left the exact float64 range (|k| >= 2^53 grid "
                              "steps): lower frac_bits")
    return k.astype(np.float64) * 2.0**-frac_bits


def to_grid(flat: np.ndarray, frac_bits: int) -> np.ndarray:
    """Nearest grid steps (int64) of float values (for sums already on the grid this is exact
    and only refuses values outside the exact range)."""
    check_frac_bits(frac_bits)
    x = np.asarray(flat, dtype=np.float64)
    if x.size and not np.isfinite(x).all():
        raise ValidationError("the aggregate contains NaN or Inf")
    q = np.rint(x * 2.0**frac_bits)
    if q.size and float(np.abs(q).max()) >= MAX_GRID_INT:
        raise ValidationError("the aggregate exceeds 2^53 grid steps: lower frac_bits")
    return q.astype(np.int64)


def cast_toward_zero(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``values`` (float64) in ``dtype`` with every magnitude rounded *down*: a coarser float
    never increases the norm, and grid values stay grid values (a float of the next binade up
    is a multiple of a larger power of two)."""
    out = values.astype(dtype)
    if out.dtype == values.dtype:
        return out
    over = np.abs(out.astype(np.float64)) > np.abs(values)
    out[over] = np.nextafter(out[over], dtype.type(0))
    return out


def grid_noised(arrays: Mapping[str, np.ndarray], k_total: np.ndarray,
                frac_bits: int) -> dict[str, np.ndarray]:
    """Split flat grid steps back into float64 arrays with the shapes of ``arrays``."""
    flat = from_grid(k_total, frac_bits)
    out: dict[str, np.ndarray] = {}
    pos = 0
    for name, arr in arrays.items():
        a = np.asarray(arr)
        out[name] = flat[pos:pos + a.size].reshape(a.shape)
        pos += a.size
    return out
