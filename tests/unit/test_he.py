"""CKKS homomorphic encryption: sums decrypt to the plain sums, the hub cannot decrypt, and
every malformed or foreign ciphertext is refused with a ValidationError that says why."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import tenseal as ts
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcare.core.errors import ConfigError, ValidationError
from fedcare.core.params import Parameters
from fedcare.privacy.he import (
    HEContext,
    HEParams,
    create_federation_context,
    decrypt_mean_parameters,
    decrypt_vector,
    decrypt_weighted_mean,
    encrypt_parameters,
    encrypt_vector,
    encrypt_weighted,
    peek,
    sum_ciphertexts,
)
from fedcare.privacy.he.vectors import CIPHER_MAGIC

#: documented CKKS error at scale 2^40: ~1e-8 per fresh ciphertext; bound it generously
ATOL_PER_SITE = 1e-6


@pytest.fixture(scope="module")
def keys() -> tuple[HEContext, HEContext]:
    secret, public = create_federation_context()
    return HEContext.load_secret(secret), HEContext.load_public(public)


@pytest.fixture(scope="module")
def other_keys() -> HEContext:
    return HEContext.create()


# --------------------------------------------------------------------------- correctness
@settings(max_examples=12)
@given(length=st.sampled_from([1, 7, 4095, 4096, 4097, 9000]), sites=st.integers(1, 6),
       seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([1e-3, 1.0, 1e4]))
def test_decrypt_of_sum_is_sum_of_plaintexts(keys, length, sites, seed, scale):
    secret, public = keys
    rng = np.random.default_rng(seed)
    xs = [rng.normal(size=length) * scale for _ in range(sites)]

    agg = sum_ciphertexts(public, [encrypt_vector(secret, x) for x in xs])
    out = decrypt_vector(secret, agg)

    assert out.shape == (length,)
    np.testing.assert_allclose(out, np.sum(xs, axis=0), rtol=0, atol=ATOL_PER_SITE * sites)


def test_weighted_mean_hides_counts_and_matches_numpy(keys):
    secret, public = keys
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=300) for _ in range(4)]
    counts = [3, 100, 57, 10_000]

    agg = sum_ciphertexts(public, {f"s{i}": encrypt_weighted(secret, x, n)
                                   for i, (x, n) in enumerate(zip(xs, counts, strict=True))})
    mean, total = decrypt_weighted_mean(secret, agg)

    assert total == pytest.approx(sum(counts), abs=1e-4)
    np.testing.assert_allclose(mean, np.average(xs, axis=0, weights=counts), atol=1e-8)


def test_parameters_round_trip_keeps_layout_and_dtype(keys):
    secret, public = keys
    a = Parameters({"w": np.ones((3, 2), np.float32), "b": np.zeros(0, np.float32),
                    "s": np.array(2.0, np.float32)})
    b = Parameters({"w": np.full((3, 2), 3, np.float32), "b": np.zeros(0, np.float32),
                    "s": np.array(4.0, np.float32)})

    agg = sum_ciphertexts(public, [encrypt_parameters(secret, a, 1),
                                   encrypt_parameters(secret, b, 3)])
    mean, total = decrypt_mean_parameters(secret, agg, a.spec)

    assert mean.spec == a.spec and total == pytest.approx(4)
    np.testing.assert_allclose(mean["w"], 2.5, atol=1e-6)
    np.testing.assert_allclose(mean["s"], 3.5, atol=1e-6)


def test_blob_header_and_expansion(keys):
    secret, _ = keys
    blob = encrypt_vector(secret, np.zeros(4097))

    h = peek(blob)

    assert (h.length, h.chunks, h.slots) == (4097, 2, 4096)
    assert h.fingerprint == secret.fingerprint
    assert 4 < len(blob) / (4097 * 4) < 40  # ~14x float32 at [60, 40, 60] when full


# ------------------------------------------------------------------------- key handling
def test_public_context_cannot_decrypt(keys):
    secret, public = keys
    blob = encrypt_vector(secret, np.arange(5.0))

    assert not public.is_private and secret.is_private
    with pytest.raises(ValidationError, match="cannot decrypt"):
        decrypt_vector(public, blob)
    raw = ts.ckks_vector(secret.tenseal, [1.0, 2.0]).serialize()
    vec = ts.ckks_vector_from(public.tenseal, raw)
    with pytest.raises(ValueError, match="secret"):  # TenSEAL itself holds no key to use
        vec.decrypt()


def test_public_context_does_not_encrypt_and_exports_no_secret(keys):
    _, public = keys
    with pytest.raises(ValidationError, match="public"):
        encrypt_vector(public, np.ones(3))
    with pytest.raises(ValidationError, match="no secret"):
        public.secret_bytes()


def test_hub_refuses_secret_file_and_site_refuses_public_file():
    secret, public = create_federation_context()

    with pytest.raises(ValidationError, match="SECRET"):
        HEContext.load_public(secret)
    with pytest.raises(ValidationError, match="PUBLIC"):
        HEContext.load_secret(public)


def test_fingerprints_agree_across_reloads():
    secret, public = create_federation_context()
    site = HEContext.load_secret(secret)

    assert site.fingerprint == HEContext.load_public(public).fingerprint
    assert HEContext.load_secret(site.secret_bytes()).fingerprint == site.fingerprint
    assert site.public().fingerprint == site.fingerprint


@pytest.mark.parametrize("data", [b"", b"nonsense", b"FCHEC1\xff\xff\xff\xff"])
def test_corrupt_context_files_are_refused(data):
    with pytest.raises(ValidationError):
        HEContext.load_public(data)
    with pytest.raises(ValidationError):
        HEContext.load_secret(data)


def test_truncated_secret_file_is_refused():
    secret, _ = create_federation_context()
    with pytest.raises(ValidationError):
        HEContext.load_secret(secret[:-100])


def test_bad_parameters_are_config_errors():
    with pytest.raises(ConfigError, match="poly_modulus_degree"):
        HEParams(poly_modulus_degree=1000)
    with pytest.raises(ConfigError, match="no room"):
        HEParams(coeff_mod_bit_sizes=(40, 40), scale_bits=40)
    with pytest.raises(ConfigError, match="security"):  # SEAL: > 218 bits at N = 8192
        HEContext.create(HEParams(coeff_mod_bit_sizes=(60, 60, 60, 60)))


# -------------------------------------------------------------------- refusing bad blobs
def test_ciphertext_under_another_context_is_rejected(keys, other_keys):
    secret, public = keys
    foreign = encrypt_vector(other_keys, np.ones(10))

    with pytest.raises(ValidationError, match="another HE context") as err:
        sum_ciphertexts(public, {"st-marys": encrypt_vector(secret, np.ones(10)),
                                 "evil": foreign})
    assert err.value.site == "evil"
    with pytest.raises(ValidationError, match="another HE context"):
        decrypt_vector(secret, foreign)


def test_mismatched_lengths_and_chunk_counts_are_rejected(keys):
    secret, public = keys
    with pytest.raises(ValidationError, match="same layout") as err:
        sum_ciphertexts(public, {"a": encrypt_vector(secret, np.ones(10)),
                                 "b": encrypt_vector(secret, np.ones(11))})
    assert err.value.site == "b"
    with pytest.raises(ValidationError, match="2 chunks"):
        sum_ciphertexts(public, [encrypt_vector(secret, np.ones(4096)),
                                 encrypt_vector(secret, np.ones(4097))])


def test_truncated_blob_is_rejected(keys):
    secret, public = keys
    blob = encrypt_vector(secret, np.ones(10))
    for cut in (3, 12, len(blob) // 2, len(blob) - 1):
        with pytest.raises(ValidationError):
            sum_ciphertexts(public, [blob[:cut]])
    with pytest.raises(ValidationError, match="padded"):
        decrypt_vector(secret, blob + b"\0")


def _reheader(blob: bytes, **changes: object) -> bytes:
    start = len(CIPHER_MAGIC) + 4
    (hlen,) = struct.unpack_from("<I", blob, len(CIPHER_MAGIC))
    header = json.loads(blob[start:start + hlen]) | changes
    hb = json.dumps(header).encode()
    return CIPHER_MAGIC + struct.pack("<I", len(hb)) + hb + blob[start + hlen:]


def test_lying_headers_are_rejected(keys):
    secret, public = keys
    blob = encrypt_vector(secret, np.ones(10))

    with pytest.raises(ValidationError, match="chunks"):
        decrypt_vector(secret, _reheader(blob, chunks=2))
    with pytest.raises(ValidationError, match="holds 10 values"):
        decrypt_vector(secret, _reheader(blob, length=12))
    with pytest.raises(ValidationError, match="positive length"):
        sum_ciphertexts(public, [_reheader(blob, length=-1)])
    with pytest.raises(ValidationError, match="positive length"):
        peek(_reheader(blob, length=True))


def test_corrupt_chunk_bytes_are_rejected(keys):
    secret, public = keys
    blob = bytearray(encrypt_vector(secret, np.ones(10)))
    blob[-200:] = b"\x00" * 200
    with pytest.raises(ValidationError):
        sum_ciphertexts(public, [bytes(blob)])


def test_bad_inputs_to_encrypt_and_sum(keys):
    secret, public = keys
    with pytest.raises(ValidationError, match="empty"):
        encrypt_vector(secret, np.zeros(0))
    with pytest.raises(ValidationError, match="1-D"):
        encrypt_vector(secret, np.zeros((2, 2)))
    with pytest.raises(ValidationError, match="NaN"):
        encrypt_vector(secret, np.array([1.0, np.nan]))
    with pytest.raises(ValidationError, match="overflowing"):
        encrypt_vector(secret, np.array([secret.params.max_abs_value * 2]))
    with pytest.raises(ValidationError, match="weight"):
        encrypt_weighted(secret, np.ones(3), 0)
    with pytest.raises(ValidationError, match="no ciphertexts"):
        sum_ciphertexts(public, [])
    with pytest.raises(ValidationError, match="bytes"):
        sum_ciphertexts(public, ["not bytes"])  # type: ignore[list-item]


def test_max_sites_bounds_the_sum():
    ctx = HEContext.create(HEParams(max_sites=2))
    blob = encrypt_vector(ctx, np.ones(3))
    with pytest.raises(ValidationError, match="max_sites"):
        sum_ciphertexts(ctx.public(), [blob, blob, blob])


def test_weighted_mean_refuses_unweighted_aggregate(keys):
    secret, _ = keys
    with pytest.raises(ValidationError, match="total weight"):
        decrypt_weighted_mean(secret, encrypt_vector(secret, np.array([1.0, 0.0])))
    with pytest.raises(ValidationError, match="model has"):
        decrypt_mean_parameters(secret, encrypt_weighted(secret, np.ones(3), 2),
                                Parameters({"w": np.ones(4, np.float32)}).spec)
