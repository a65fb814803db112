"""Clip and noise steps (Hypothesis for the maths) and the DP-FedAvg hooks."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedcare.core.errors import ConfigError, ValidationError
from fedcare.core.params import Parameters
from fedcare.privacy.dp import (
    PrivacySpec,
    central_noise,
    clip_update,
    gaussian_noise,
    privatize_update,
)
from fedcare.privacy.dp.mechanisms import (
    distributed_noise_std,
    effective_noise_multiplier,
)

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)
arrays = hnp.arrays(np.float32, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0,
                                                 max_side=4), elements=finite)


@given(st.lists(arrays, min_size=1, max_size=4), st.floats(1e-3, 1e3))
def test_clip_bounds_the_whole_flat_norm_and_keeps_direction(parts: list[np.ndarray],
                                                              clip: float) -> None:
    delta = Parameters({f"p{i}": a for i, a in enumerate(parts)})
    before = [a.copy() for a in parts]
    out, norm = clip_update(delta, clip)
    flat_in = np.concatenate([a.reshape(-1).astype(np.float64) for a in parts])
    flat_out = out.flatten(np.float64)
    assert norm == pytest.approx(float(np.linalg.norm(flat_in)), rel=1e-9, abs=1e-12)
    assert np.linalg.norm(flat_out) <= clip * (1 + 1e-6)
    if norm <= clip:  # within the bound: unchanged (including the zero vector)
        np.testing.assert_array_equal(flat_out, flat_in.astype(np.float32))
    else:
        np.testing.assert_allclose(flat_out, flat_in * (clip / norm), rtol=1e-5, atol=1e-6)
    for a, b in zip(parts, before, strict=True):  # the input is never written
        np.testing.assert_array_equal(a, b)
    assert [o.shape for o in out.values()] == [a.shape for a in parts]
    assert all(o.dtype == np.float32 for o in out.values())


@settings(deadline=None)
@given(st.lists(arrays, min_size=1, max_size=4), st.floats(1e-3, 1e3), st.integers(8, 30))
def test_privatized_update_is_on_the_grid_with_the_l2_bound_exact(
        parts: list[np.ndarray], clip: float, frac_bits: int) -> None:
    """After clipping, grid rounding and the float32 cast, the update is a vector of exact
    grid multiples whose norm is <= clip in exact integer arithmetic: the sensitivity the
    accountant assumes (C) needs no rounding term."""
    site = Parameters({f"p{i}": a for i, a in enumerate(parts)})
    zero = Parameters({k: np.zeros_like(v) for k, v in site.items()})
    spec = PrivacySpec("dp_fedavg_central", clip=clip, noise_multiplier=1.0)
    out, _ = privatize_update(zero, site, spec, n_sites=1, frac_bits=frac_bits)
    assert [o.shape for o in out.values()] == [a.shape for a in parts]
    assert all(o.dtype == np.float32 for o in out.values())
    steps = out.flatten(np.float64) * 2.0**frac_bits
    np.testing.assert_array_equal(steps, np.rint(steps))
    bound = Fraction(clip) * 2**frac_bits
    assert sum(int(v) ** 2 for v in steps) <= bound * bound


def test_clip_zero_vector_and_0d_arrays() -> None:
    out, norm = clip_update({"a": np.zeros(3), "b": np.float64(0.0)}, 1.0)
    assert norm == 0.0 and out["b"].shape == () and not out.flatten().any()
    out, norm = clip_update({"s": np.array(5.0)}, 2.0)
    assert norm == 5.0 and float(out["s"]) == pytest.approx(2.0)


@pytest.mark.parametrize("clip", [0.0, -1.0, float("nan"), float("inf"), True])
def test_clip_bound_must_be_positive_and_finite(clip: float) -> None:
    with pytest.raises(ConfigError, match=r"privacy\.clip"):
        clip_update({"a": np.ones(2)}, clip)


def test_clip_refuses_non_finite_updates() -> None:
    with pytest.raises(ValidationError, match="NaN or Inf"):
        clip_update({"a": np.array([1.0, np.nan])}, 1.0)


def test_secure_noise_is_gaussian_on_the_grid_and_not_repeated() -> None:
    z = gaussian_noise(200_001, 1.0, frac_bits=10)
    assert z.shape == (200_001,)
    np.testing.assert_array_equal(z * 2.0**10, np.rint(z * 2.0**10))  # exact grid multiples
    # Fixed sample size, bounds at > 10 standard errors: a false alarm needs a ~1e-20 event.
    assert abs(z.mean()) < 0.025 and abs(z.std() - 1) < 0.02
    assert abs(np.mean(z ** 4) - 3) < 0.12  # kurtosis of a normal
    assert not np.array_equal(gaussian_noise(8, 1.0), gaussian_noise(8, 1.0))


def test_gaussian_noise_seeded_for_tests_only_and_shapes() -> None:
    a = gaussian_noise((2, 3), 0.5, np.random.default_rng(1))
    b = gaussian_noise((2, 3), 0.5, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert gaussian_noise((), 1.0).shape == () and gaussian_noise(0, 1.0).shape == (0,)
    assert not gaussian_noise(4, 0.0).any()
    for bad in (-1.0, float("nan")):
        with pytest.raises(ConfigError, match="std"):
            gaussian_noise(3, bad)
    with pytest.raises(ConfigError, match="negative"):
        gaussian_noise((-1,), 1.0)


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"clip": 0.0}, "privacy.clip"), ({"clip": float("nan")}, "privacy.clip"),
    ({"noise_multiplier": -0.1}, "privacy.noise_multiplier"),
    ({"noise_multiplier": float("nan")}, "privacy.noise_multiplier"),
    ({"delta": 0.0}, "privacy.delta"), ({"delta": 1.0}, "privacy.delta"),
    ({"mechanism": "dp_magic"}, "privacy.mode"), ({"mechanism": "none"}, "privacy.mode"),
    ({"accountant": "moments"}, "privacy.accountant"),
])
def test_spec_validation_names_the_key(kwargs: dict, key: str) -> None:
    args = {"mechanism": "dp_fedavg_central", "clip": 1.0, "noise_multiplier": 1.0, **kwargs}
    with pytest.raises(ConfigError, match=key):
        PrivacySpec(**args)


def _models(rng: np.random.Generator, scale: float) -> tuple[Parameters, Parameters]:
    g = Parameters({"w": rng.normal(size=(3, 4)).astype(np.float32),
                    "b": np.zeros(4, dtype=np.float32)})
    s = Parameters({k: (v + scale * rng.normal(size=v.shape)).astype(np.float32)
                    for k, v in g.items()})
    return g, s


def test_privatize_update_returns_the_clipped_delta() -> None:
    spec = PrivacySpec("dp_fedavg_central", clip=0.5, noise_multiplier=1.0)
    g, s = _models(np.random.default_rng(0), scale=3.0)
    delta, info = privatize_update(g, s, spec, n_sites=4)
    assert info.clipped and info.pre_clip_norm > 0.5 and info.noise_std == 0.0
    assert np.linalg.norm(delta.flatten(np.float64)) == pytest.approx(0.5, rel=1e-5)
    raw = np.concatenate([(s[k] - g[k]).reshape(-1) for k in g])
    np.testing.assert_allclose(delta.flatten(), raw * 0.5 / info.pre_clip_norm, rtol=1e-4)


def test_distributed_noise_sums_to_the_central_noise_level() -> None:
    spec = PrivacySpec("dp_fedavg_distributed", clip=1.0, noise_multiplier=2.0)
    n = 4
    g = Parameters({"w": np.zeros(50_000, dtype=np.float64)})
    rng = np.random.default_rng(3)
    total = sum(privatize_update(g, g, spec, n_sites=n, rng=rng)[0]["w"] for _ in range(n))
    assert np.std(total) == pytest.approx(2.0, rel=0.02)  # z * C on the sum
    assert distributed_noise_std(1.0, 2.0, n) == pytest.approx(1.0)


def test_central_noise_on_sum_and_mean_agree_in_distribution() -> None:
    spec = PrivacySpec("dp_fedavg_central", clip=1.0, noise_multiplier=1.5)
    n, zeros = 5, np.zeros(40_000, dtype=np.float32)
    from_sum = central_noise(zeros, spec, n, np.random.default_rng(0), values_are="sum")
    from_mean = central_noise(zeros, spec, n, np.random.default_rng(0), values_are="mean")
    assert from_sum.dtype == np.float32
    np.testing.assert_allclose(from_sum, from_mean)
    assert np.std(from_sum) == pytest.approx(1.5 / n, rel=0.03)
    named = central_noise({"a": np.full(3, 10.0)}, spec, 2, np.random.default_rng(0))
    assert isinstance(named, Parameters) and np.allclose(named["a"], 5.0, atol=4)


def test_hooks_refuse_the_wrong_mechanism_and_bad_site_counts() -> None:
    g, s = _models(np.random.default_rng(0), 1.0)
    sgd = PrivacySpec("dp_sgd", clip=1.0, noise_multiplier=1.0)
    with pytest.raises(ConfigError, match="not DP-FedAvg"):
        privatize_update(g, s, sgd, n_sites=2)
    central = PrivacySpec("dp_fedavg_central", clip=1.0, noise_multiplier=1.0)
    with pytest.raises(ConfigError, match="n_sites"):
        privatize_update(g, s, central, n_sites=0)
    distributed = PrivacySpec("dp_fedavg_distributed", clip=1.0, noise_multiplier=1.0)
    with pytest.raises(ConfigError, match="sites add the noise"):
        central_noise(np.zeros(3), distributed, 2)
    with pytest.raises(ValidationError, match="layouts"):
        privatize_update(g, Parameters({"w": s["w"]}), central, n_sites=2)


def test_effective_noise_against_the_hub() -> None:
    assert effective_noise_multiplier(2.0, 4, distributed=False, secure_aggregation=True) == 0
    assert effective_noise_multiplier(2.0, 4, distributed=True, secure_aggregation=True) == 2
    assert effective_noise_multiplier(2.0, 4, distributed=True,
                                      secure_aggregation=False) == pytest.approx(1.0)
    assert math.isclose(distributed_noise_std(2.0, 1.0, 1), 2.0)
