"""The exact discrete Gaussian sampler and the fixed-point grid (CKS20; Mironov 2012).

Statistical tests draw a FIXED number of samples from a SEEDED generator, so they are
deterministic (they cannot flake); their bounds are set at p ~ 1e-9 so that they are still
meaningful tests of the distribution, not of one lucky seed. The one test on the secure source
uses bounds more than 10 standard errors wide.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats

from fedcare.core.errors import ConfigError, ValidationError
from fedcare.core.params import Parameters
from fedcare.privacy.dp import PrivacySpec, privatize_update
from fedcare.privacy.dp.discrete_gaussian import (
    RandomWords,
    bernoulli_exp_neg,
    cast_toward_zero,
    discrete_laplace,
    grid_variance,
    round_to_grid,
    sample_discrete_gaussian,
)
from fedcare.privacy.dp.hooks import noisy_sum

P_FALSE_ALARM = 1e-9


def _exact_pmf(variance: Fraction, support: int) -> dict[int, float]:
    """N_Z(0, variance) probabilities on |k| <= support (the tail beyond is < 1e-30)."""
    w = {k: math.exp(-k * k / (2 * float(variance))) for k in range(-support, support + 1)}
    total = math.fsum(w.values())
    return {k: v / total for k, v in w.items()}


def _chi_square_p(samples: np.ndarray, pmf: dict[int, float], n: int) -> float:
    """p-value of Pearson's chi-square test, cells with expected count >= 20 kept apart and
    the rest pooled into one cell per tail."""
    keys = sorted(pmf)
    inner = [k for k in keys if n * pmf[k] >= 20]
    lo, hi = min(inner), max(inner)
    counts = [np.count_nonzero(samples < lo)]
    expected = [n * math.fsum(p for k, p in pmf.items() if k < lo)]
    for k in inner:
        counts.append(np.count_nonzero(samples == k))
        expected.append(n * pmf[k])
    counts.append(np.count_nonzero(samples > hi))
    expected.append(n * math.fsum(p for k, p in pmf.items() if k > hi))
    obs, exp = np.array(counts, dtype=float), np.array(expected)
    stat = float(np.sum((obs - exp) ** 2 / exp))
    return float(stats.chi2.sf(stat, df=len(obs) - 1))


@pytest.mark.parametrize("variance", [Fraction(1, 4), Fraction(9, 4), Fraction(10)])
def test_small_sigma_samples_follow_the_enumerated_pmf(variance: Fraction) -> None:
    n = 200_000
    samples = sample_discrete_gaussian(variance, n, np.random.default_rng(7))
    assert samples.dtype == np.int64 and samples.shape == (n,)
    pmf = _exact_pmf(variance, 60)
    assert math.isclose(sum(pmf.values()), 1.0)
    assert _chi_square_p(samples, pmf, n) > P_FALSE_ALARM


def test_discrete_laplace_follows_its_pmf() -> None:
    t, n = 3, 200_000
    samples = discrete_laplace(t, n, RandomWords(np.random.default_rng(11)))
    w = {k: math.exp(-abs(k) / t) for k in range(-200, 201)}
    total = math.fsum(w.values())
    assert _chi_square_p(samples, {k: v / total for k, v in w.items()}, n) > P_FALSE_ALARM


def test_grid_sized_sigma_has_the_requested_mean_and_variance() -> None:
    variance = grid_variance(1.3, 0.7, 24)  # what DP-FedAvg asks: (z C 2^24)^2, ~2.3e14
    n = 400_000
    k = sample_discrete_gaussian(variance, n, np.random.default_rng(3)).astype(np.float64)
    sigma = math.sqrt(variance)
    z = stats.norm.isf(P_FALSE_ALARM / 2)  # ~6.1 standard errors
    assert abs(k.mean()) < z * sigma / math.sqrt(n)
    assert abs(k.var() / float(variance) - 1) < z * math.sqrt(2 / n)
    assert abs(stats.kurtosis(k)) < z * math.sqrt(24 / n)


def test_secure_source_is_used_by_default_and_never_repeats() -> None:
    a = sample_discrete_gaussian(2.0**40, 100_000)
    b = sample_discrete_gaussian(2.0**40, 100_000)
    assert not np.array_equal(a, b)
    assert abs(a.std() / 2.0**20 - 1) < 0.02  # 0.02 is > 10 standard errors


def test_the_exact_slow_path_decides_like_the_fast_path_and_is_unbiased() -> None:
    gamma = np.full(50_000, 0.7)
    fast = bernoulli_exp_neg(gamma, 1e-15, lambda i: Fraction(7, 10),
                             RandomWords(np.random.default_rng(5)))
    # A useless error bound forces every element through the exact decimal comparison of
    # the same uniform: the decisions must be identical, element by element.
    exact = bernoulli_exp_neg(gamma, 1.0, lambda i: Fraction(7, 10),
                              RandomWords(np.random.default_rng(5)))
    np.testing.assert_array_equal(fast, exact)
    p = math.exp(-0.7)
    z = stats.norm.isf(P_FALSE_ALARM / 2)
    assert abs(exact.mean() - p) < z * math.sqrt(p * (1 - p) / gamma.size)
    assert bernoulli_exp_neg(np.zeros(4), 1.0, lambda i: Fraction(0),
                             RandomWords(np.random.default_rng(0))).all()


def test_sampler_validates_its_inputs() -> None:
    for bad in (-1.0, float("nan"), float("inf"), "1"):
        with pytest.raises(ConfigError, match="variance"):
            sample_discrete_gaussian(bad, 3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="size"):
        sample_discrete_gaussian(1.0, -1)
    with pytest.raises(ConfigError, match="too large"):
        sample_discrete_gaussian(2.0**110, 1)
    assert not sample_discrete_gaussian(0, 5).any()
    with pytest.raises(ConfigError, match="frac_bits"):
        grid_variance(1.0, 1.0, 60)


# -- the grid ---------------------------------------------------------------------------------
vectors = hnp.arrays(np.float64, st.integers(0, 40),
                     elements=st.floats(-10, 10, allow_nan=False, allow_infinity=False))


@settings(max_examples=200, deadline=None)
@given(x=vectors, clip=st.floats(1e-3, 5.0), frac_bits=st.integers(0, 30))
def test_round_to_grid_keeps_the_l2_bound_exactly(x: np.ndarray, clip: float,
                                                  frac_bits: int) -> None:
    norm = float(np.linalg.norm(x))
    clipped = x * (clip / norm) if norm > clip else x
    k = round_to_grid(clipped, clip, frac_bits)
    assert k.dtype == np.int64 and k.shape == x.shape
    bound = Fraction(clip) * 2**frac_bits
    assert sum(int(v) ** 2 for v in k) <= bound * bound  # exact integer check
    assert np.all(np.abs(k - clipped * 2.0**frac_bits) <= 1.0)


def test_round_to_grid_falls_back_toward_zero_when_nearest_overshoots() -> None:
    x = np.full(2, 1 / math.sqrt(2))  # norm 1; x * 4 = 2.83 rounds to 3: norm^2 18 > 16
    k = round_to_grid(x, 1.0, 2)
    assert k.tolist() == [2, 2]
    with pytest.raises(ValidationError, match="NaN"):
        round_to_grid(np.array([np.nan]), 1.0, 2)


def test_cast_toward_zero_never_grows_a_value_and_stays_on_the_grid() -> None:
    rng = np.random.default_rng(0)
    values = np.rint(rng.normal(scale=2.0**26, size=10_000)) * 2.0**-24  # |v| up to ~16
    cast = cast_toward_zero(values, np.dtype(np.float32))
    assert cast.dtype == np.float32
    assert np.all(np.abs(cast.astype(np.float64)) <= np.abs(values))
    steps = cast.astype(np.float64) * 2.0**24
    np.testing.assert_array_equal(steps, np.rint(steps))


# -- the DP-FedAvg noise is on the grid (no floating-point sampler anywhere) --------------------
def _models(rng: np.random.Generator, d: int = 5_000) -> tuple[Parameters, Parameters]:
    g = Parameters({"w": rng.normal(size=d).astype(np.float32),
                    "b": rng.normal(size=7).astype(np.float32)})
    s = Parameters({k: (v + 0.01 * rng.normal(size=v.shape)).astype(np.float32)
                    for k, v in g.items()})
    return g, s


@pytest.mark.parametrize("frac_bits", [8, 16, 24])
@pytest.mark.parametrize("keep_float64", [True, False])
def test_a_sites_noised_update_is_an_exact_grid_multiple(frac_bits: int,
                                                         keep_float64: bool) -> None:
    spec = PrivacySpec("dp_fedavg_distributed", clip=0.5, noise_multiplier=1.1)
    g, s = _models(np.random.default_rng(1))
    delta, _ = privatize_update(g, s, spec, n_sites=3, frac_bits=frac_bits,
                                keep_float64=keep_float64)
    flat = delta.flatten(np.float64)
    assert delta["w"].dtype == (np.float64 if keep_float64 else np.float32)
    steps = flat * 2.0**frac_bits
    # A float Gaussian would leave ~53 significant bits below the grid step: none here.
    np.testing.assert_array_equal(steps, np.rint(steps))
    assert flat.std() == pytest.approx(1.1 * 0.5 / math.sqrt(3), rel=0.05)


def test_the_low_bits_of_a_release_do_not_depend_on_the_input() -> None:
    """Mironov's attack: with float noise, x + N leaves x's low bits in the result. Here two
    inputs that differ below the grid step give releases with the same support (the grid),
    because the clipped value is put on the grid before noise is added."""
    spec = PrivacySpec("dp_fedavg_distributed", clip=10.0, noise_multiplier=1.0)
    zero = Parameters({"w": np.zeros(20_000)})
    for tiny in (0.0, 2.0**-40, 3 * 2.0**-30):
        site = Parameters({"w": np.full(20_000, 0.25 + tiny)})
        out = privatize_update(zero, site, spec, n_sites=1, frac_bits=16,
                               keep_float64=True)[0]["w"]
        residue = out * 2.0**16 - np.rint(out * 2.0**16)
        assert not residue.any()


def test_central_clipped_update_keeps_its_norm_after_the_dtype_cast() -> None:
    spec = PrivacySpec("dp_fedavg_central", clip=1.0, noise_multiplier=1.0)
    g, s = _models(np.random.default_rng(2), d=50_000)
    s = Parameters({k: v + np.float32(1.0) for k, v in s.items()})  # far beyond the clip
    delta, info = privatize_update(g, s, spec, n_sites=2, frac_bits=24)
    assert info.clipped
    flat = delta.flatten(np.float64)
    steps = [int(v) for v in np.rint(flat * 2.0**24)]
    np.testing.assert_array_equal(flat * 2.0**24, steps)
    assert sum(v * v for v in steps) <= (2**24) ** 2


def test_hub_noisy_sum_is_exact_on_the_grid_and_snaps_off_grid_sums() -> None:
    spec = PrivacySpec("dp_fedavg_central", clip=1.0, noise_multiplier=0.8)
    total = np.full(100_000, 1.0 + 2.0**-30)  # off the 2^-16 grid
    out = noisy_sum(total, spec, np.random.default_rng(0), frac_bits=16)
    np.testing.assert_array_equal(out * 2.0**16, np.rint(out * 2.0**16))
    assert (out - 1.0).std() == pytest.approx(0.8, rel=0.02)


def test_noised_grid_values_encode_for_secure_aggregation_without_rounding() -> None:
    from fedcare.privacy.secagg import SecAggConfig
    from fedcare.privacy.secagg.encoding import decode, encode

    spec = PrivacySpec("dp_fedavg_distributed", clip=1.0, noise_multiplier=1.0)
    g, s = _models(np.random.default_rng(4), d=1_000)
    delta, _ = privatize_update(g, s, spec, n_sites=2, frac_bits=24, keep_float64=True)
    flat = delta.flatten(np.float64)
    cfg = SecAggConfig(sites=("a", "b"), threshold=2, vector_length=flat.size, clip=64.0,
                       frac_bits=24, mod_bits=64)
    np.testing.assert_array_equal(decode(encode(flat, cfg), cfg), flat)


def test_the_secure_keystream_fills_every_chunk() -> None:
    from fedcare.privacy.dp.discrete_gaussian import _CHUNK_WORDS

    words = RandomWords().words(_CHUNK_WORDS + 3)
    tail = words[-8:]
    assert np.unique(tail).size == 8 and tail.all()
    # Each of the 64 bit positions is set in about half of the words (±10 standard errors).
    ones = np.unpackbits(words[:200_000].view(np.uint8)).reshape(-1, 64).mean(axis=0)
    assert np.all(np.abs(ones - 0.5) < 10 * 0.5 / math.sqrt(200_000))


def test_the_hubs_central_noise_is_a_discrete_gaussian_on_the_studys_grid() -> None:
    from fedcare.engine.privacy import HubPrivacy

    central = PrivacySpec("dp_fedavg_central", clip=0.5, noise_multiplier=2.0)
    hub = HubPrivacy(central, 4, frac_bits=12)
    total = np.arange(50_000) * 2.0**-12
    out = hub.noisy_sum(total)
    assert out is not None
    np.testing.assert_array_equal(out * 2.0**12, np.rint(out * 2.0**12))
    assert (out - total).std() == pytest.approx(1.0, rel=0.03)  # z * C on the sum
    distributed = PrivacySpec("dp_fedavg_distributed", clip=0.5, noise_multiplier=2.0)
    assert HubPrivacy(distributed, 4, frac_bits=12).noisy_sum(total) is None


def test_exact_squared_norm_in_both_arithmetics() -> None:
    from fedcare.privacy.dp.discrete_gaussian import _exact_sq_norm

    rng = np.random.default_rng(9)
    for top in (2**10, 2**25, 2**40):  # float64 path, float64 overflowing 2^52, Python ints
        k = rng.integers(-top, top, size=5_000)
        assert _exact_sq_norm(k) == sum(int(v) * int(v) for v in k)


def test_a_float_clip_that_overshoots_is_still_bounded_after_rounding() -> None:
    x = np.full(10_000, 1.0 / 100) * (1 + 1e-7)  # norm 1.0000001 > clip 1
    k = round_to_grid(x, 1.0, 30)
    assert sum(int(v) ** 2 for v in k) <= (2**30) ** 2
    assert np.all(np.abs(k - x * 2.0**30) <= 2**30 * 2e-7 + 1)
