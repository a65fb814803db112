from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedcare.data import apply_standardizer, federated_standardizer


@st.composite
def site_arrays(draw: st.DrawFn) -> list[np.ndarray]:
    """1-6 sites of 0-20 rows, 1-4 features, values on a 1/8 grid (exact in float32)."""
    width = draw(st.integers(1, 4))
    sizes = draw(st.lists(st.integers(0, 20), min_size=1, max_size=6).filter(lambda s: sum(s)))
    cells = st.integers(-8000, 8000).map(lambda v: v / 8)
    return [np.array(draw(st.lists(cells, min_size=n * width, max_size=n * width)),
                     dtype=np.float32).reshape(n, width) for n in sizes]


@given(site_arrays())
def test_equals_pooled_numpy_mean_and_std(arrays: list[np.ndarray]) -> None:
    pooled = np.concatenate(arrays).astype(np.float64)
    expected_std = pooled.std(axis=0)
    expected_std[expected_std == 0] = 1.0

    mean, std = federated_standardizer(arrays)

    assert mean.dtype == np.float32 and std.dtype == np.float32
    np.testing.assert_allclose(mean, pooled.mean(axis=0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(std, expected_std, rtol=1e-5, atol=1e-6)


def test_large_offset_feature_keeps_its_spread() -> None:
    rng = np.random.default_rng(0)
    arrays = [(1e4 + rng.standard_normal((n, 2))).astype(np.float32) for n in (300, 50, 700)]
    pooled = np.concatenate(arrays).astype(np.float64)

    mean, std = federated_standardizer(arrays)

    np.testing.assert_allclose(std, pooled.std(axis=0), rtol=1e-4)
    np.testing.assert_allclose(mean, pooled.mean(axis=0), rtol=1e-7)


def test_constant_feature_gets_unit_std_and_standardizes_to_zero() -> None:
    arrays = [np.full((n, 1), 0.1, np.float32) for n in (1000, 333)]

    mean, std = federated_standardizer(arrays)
    z = apply_standardizer(arrays[0], mean, std)

    assert std.tolist() == [1.0]
    assert np.all(z == 0)


def test_apply_returns_a_new_float32_array_with_zero_mean_unit_std() -> None:
    rng = np.random.default_rng(1)
    arrays = [rng.normal(5, 3, size=(n, 3)) for n in (40, 60)]
    before = arrays[0].copy()

    mean, std = federated_standardizer(arrays)
    z = np.concatenate([apply_standardizer(a, mean, std) for a in arrays])

    assert z.dtype == np.float32
    np.testing.assert_array_equal(arrays[0], before)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=0), 1, atol=1e-5)


def test_image_shaped_arrays_get_per_pixel_statistics() -> None:
    arrays = [np.random.default_rng(2).random((5, 1, 2, 2), dtype=np.float32)]
    mean, std = federated_standardizer(arrays)
    assert mean.shape == std.shape == (1, 2, 2)


@pytest.mark.parametrize("arrays,match", [
    ([], "at least one"),
    ([np.zeros((0, 2))], "zero training rows"),
    ([np.zeros((2, 2)), np.zeros((2, 3))], "different feature shapes"),
])
def test_refuses_unusable_input(arrays: list[np.ndarray], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        federated_standardizer(arrays)
