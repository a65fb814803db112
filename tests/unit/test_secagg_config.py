"""SecAgg config: refusals, overflow headroom, the SecAgg+ graph and degree rule, fixed point."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedcare.core.errors import ConfigError, ValidationError
from fedcare.privacy.secagg import GraphKind, SecAggConfig, decode, encode, find_degree
from fedcare.privacy.secagg.crypto import MaskStream, combine, split

SITES = tuple(f"s{i}" for i in range(10))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"sites": ("a",), "threshold": 1}, "at least 2 sites"),
    ({"sites": ("a", "a", "b"), "threshold": 2}, "unique"),
    ({"sites": ("a", ""), "threshold": 2}, "non-empty"),
    ({"threshold": 5}, "2t > n"),  # 5 of 10 is not a majority
    ({"threshold": 11}, "2 <= t <= n"),
    ({"vector_length": -1}, "vector_length"),
    ({"mod_bits": 16}, "mod_bits must be 32 or 64"),
    ({"clip": float("nan")}, "clip must be a finite number"),
    ({"clip": 0.0}, "clip"),
    ({"frac_bits": 63}, "frac_bits"),
    ({"round_id": -1}, "round_id"),
    ({"graph": "star"}, "graph must be one of"),
    ({"graph": "secagg+", "degree": 3}, "degree must be an even"),
    ({"dropout_fraction": 1.0}, "dropout_fraction"),
])
def test_bad_configs_are_refused_with_a_reason(kwargs, match):
    base = {"sites": SITES, "threshold": 7, "vector_length": 3}
    with pytest.raises(ConfigError, match=match):
        SecAggConfig(**{**base, **kwargs})


def test_headroom_rule_refuses_configs_whose_sum_could_overflow():
    # 10 x 1.0 x 2^27 = 1.34e9 <= 2^31 - 1: fits; 2^28 does not.
    SecAggConfig(sites=SITES, threshold=7, vector_length=1, clip=1.0, frac_bits=27)
    with pytest.raises(ConfigError, match=r"overflow 32-bit sums.*use mod_bits=64"):
        SecAggConfig(sites=SITES, threshold=7, vector_length=1, clip=1.0, frac_bits=28)
    SecAggConfig(sites=SITES, threshold=7, vector_length=1, clip=1.0, frac_bits=28, mod_bits=64)


def test_sum_at_the_headroom_limit_decodes_exactly():
    cfg = SecAggConfig(sites=SITES, threshold=7, vector_length=2, clip=1.0, frac_bits=27)
    total = np.zeros(2, cfg.dtype)
    for _ in SITES:
        total += encode(np.array([1.0, -1.0]), cfg)
    np.testing.assert_array_equal(decode(total, cfg), [10.0, -10.0])


@given(st.lists(st.floats(-3.0, 3.0, allow_nan=False), max_size=30), st.sampled_from([32, 64]),
       st.integers(0, 20))
def test_encode_decode_error_is_at_most_half_a_step(values, mod, frac):
    cfg = SecAggConfig(sites=("a", "b"), threshold=2, vector_length=len(values), clip=3.0,
                       frac_bits=frac, mod_bits=mod)
    x = np.array(values, np.float64)
    enc = encode(x, cfg)
    assert enc.dtype == cfg.dtype
    assert np.all(np.abs(decode(enc, cfg) - x) <= 2.0 ** -(frac + 1))


def test_encode_refuses_bad_input():
    cfg = SecAggConfig(sites=("a", "b"), threshold=2, vector_length=2, clip=1.0)
    with pytest.raises(ValidationError, match="clip range"):
        encode(np.array([0.0, -1.0001]), cfg)
    with pytest.raises(ValidationError, match="NaN"):
        encode(np.array([np.inf, 0.0]), cfg)
    with pytest.raises(ValidationError, match="shape"):
        encode(np.zeros((2, 1)), cfg)
    with pytest.raises(ValidationError, match="real numbers"):
        encode(np.array(["a", "b"]), cfg)
    with pytest.raises(ValidationError, match="real numbers"):
        encode(np.array([1j, 0]), cfg)


@given(st.lists(st.floats(-1.0, 1.0, allow_nan=False, width=32), min_size=1, max_size=30),
       st.sampled_from([32, 64]))
def test_float32_ints_and_float64_inputs_encode_alike(values, mod):
    cfg = SecAggConfig(sites=("a", "b"), threshold=2, vector_length=len(values), clip=1.0,
                       frac_bits=20, mod_bits=mod)
    x32 = np.array(values, np.float32)
    np.testing.assert_array_equal(encode(x32, cfg), encode(x32.astype(np.float64), cfg))
    ints = np.sign(x32).astype(np.int8)
    np.testing.assert_array_equal(encode(ints, cfg), encode(ints.astype(np.float64), cfg))


def test_secagg_plus_graph_is_symmetric_regular_seeded_and_public():
    a = SecAggConfig(sites=SITES, threshold=7, vector_length=1, graph="secagg+", degree=4,
                     graph_seed=b"x")
    b = SecAggConfig(sites=SITES, threshold=7, vector_length=1, graph="secagg+", degree=4,
                     graph_seed=b"x")
    c = SecAggConfig(sites=SITES, threshold=7, vector_length=1, graph="secagg+", degree=4,
                     graph_seed=b"y")
    for u in SITES:
        assert len(a.neighbours(u)) == 4 and u not in a.neighbours(u)
        assert all(u in a.neighbours(v) for v in a.neighbours(u))
        assert a.neighbours(u) == b.neighbours(u)
    assert any(a.neighbours(u) != c.neighbours(u) for u in SITES)
    assert a.digest == b.digest != c.digest
    complete = [SecAggConfig(sites=SITES, threshold=7, vector_length=1, graph_seed=seed)
                for seed in (b"study-a", b"study-b")]
    assert complete[0].digest != complete[1].digest  # the public seed is bound in as well
    assert a.share_threshold == 4  # max(3, ceil(5 * 7 / 10))


def test_degree_rule_is_logarithmic_and_falls_back_to_complete_for_small_federations():
    assert find_degree(10, 0.1, 0.05, 40, 20) is None
    cfg = SecAggConfig(sites=SITES, threshold=7, vector_length=1, graph=GraphKind.SECAGG_PLUS)
    assert cfg.is_complete and cfg.share_threshold == 7
    degrees = [find_degree(n, 0.1, 0.05, 40, 20) for n in (100, 1000, 10_000)]
    assert all(d is not None for d in degrees)
    ks = [d[0] for d in degrees if d]
    assert ks == sorted(ks) and ks[-1] < 50  # grows slowly with n
    for k, t_k in (d for d in degrees if d):
        assert 2 * t_k > k + 1 and k % 2 == 0


def test_shamir_over_a_256_bit_field_reconstructs_and_detects_a_bad_share():
    secret = bytes(range(32))
    shares = split(secret, 5, 3)
    pts = {i + 1: v for i, v in enumerate(shares)}
    assert combine({x: pts[x] for x in (2, 4, 5)}, 3, owner="a") == secret
    assert combine(pts, 3, owner="a") == secret
    with pytest.raises(Exception, match="inconsistent"):
        combine({**pts, 5: (pts[5] + 1)}, 3, owner="a")
    with pytest.raises(Exception, match="only 2 shares"):
        combine({1: pts[1], 2: pts[2]}, 3, owner="a")
    assert combine({x: pts[x] for x in (1, 2)}, 2, owner="a") != secret  # below threshold


def test_mask_stream_is_deterministic_and_cancels():
    prg = MaskStream(1000, np.dtype("<u8"))
    acc = np.arange(1000, dtype=np.uint64)
    prg.add(acc, b"k" * 32, +1)
    assert not np.array_equal(acc, np.arange(1000))
    prg.add(acc, b"k" * 32, -1)
    np.testing.assert_array_equal(acc, np.arange(1000, dtype=np.uint64))
