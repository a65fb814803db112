"""Encrypted flat vectors: encrypt (site), add (hub), decrypt (site); one validated blob format.

A vector of any length is cut into chunks of ``slots`` values (4096 at N = 8192), each packed
into one CKKS ciphertext (SIMD packing: one ciphertext, 4096 values, one addition adds all of
them). The blob is ``MAGIC | u32 header length | JSON header | u32 size per chunk | chunks``;
the header names the context fingerprint, the vector length and the chunk count, and
everything is checked before a byte reaches SEAL.

Weighted averages (FedAvg): a site encrypts ``[n_i * x_i, n_i]`` — its example count rides in
the last slot, encrypted too, so the hub learns neither the update nor the site's size; the
deciding site divides the decrypted sum by the decrypted total weight. CKKS adds an absolute
error of ~1e-8 per ciphertext (measured, module :mod:`~fedcare.privacy.he.context`), so after
the division the mean's error is far below float32 resolution.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import tenseal as ts

from fedcare.core.errors import ValidationError
from fedcare.core.framing import frame, unframe
from fedcare.core.params import Parameters, ParamSpec
from fedcare.privacy.he.context import HEContext

CIPHER_MAGIC = b"FCHEV1"
_MAX_HEADER = 1 << 12
#: longest vector accepted (2^31 values: ~8 GB of float32; far beyond any model we ship)
MAX_LENGTH = 1 << 31


@dataclass(frozen=True)
class CipherHeader:
    """What a ciphertext blob declares about itself."""

    fingerprint: str
    length: int
    chunks: int
    slots: int


def peek(blob: bytes) -> CipherHeader:
    """Read and check a blob's header without touching SEAL (routing, early refusal)."""
    header, _, _ = _split(blob)
    return header


def encrypt_vector(ctx: HEContext, values: np.ndarray) -> bytes:
    """Encrypt a finite 1-D vector (any length >= 1) into one blob."""
    if not ctx.is_private:
        # TenSEAL could encrypt with the public key, but only sites encrypt in fedcare, and
        # a hub that encrypts is a bug worth stopping.
        raise ValidationError("only a site's secret HE context encrypts; this one is public")
    flat = _check_values(ctx, values)
    slots = ctx.params.slots
    pieces = []
    for start in range(0, flat.size, slots):
        try:
            pieces.append(ts.ckks_vector(ctx.tenseal, flat[start:start + slots]).serialize())
        except ValueError as exc:  # the encoder's own range check (should be unreachable)
            raise ValidationError(f"CKKS encoder refused the values: {exc}") from exc
    return _join(ctx, flat.size, pieces)


def decrypt_vector(ctx: HEContext, blob: bytes) -> np.ndarray:
    """Decrypt a blob (a single site's or an aggregate) to float64."""
    if not ctx.is_private:
        raise ValidationError("this HE context is public (the hub's): it cannot decrypt")
    header, sizes, body = _split(blob)
    _check_context(ctx, header, "ciphertext")
    out = np.empty(header.length, dtype=np.float64)
    pos = 0
    for vec in _vectors(ctx, header, sizes, body, "ciphertext"):
        values = vec.decrypt()
        out[pos:pos + len(values)] = values
        pos += len(values)
    return out


def sum_ciphertexts(ctx: HEContext, blobs: Sequence[bytes] | Mapping[str, bytes]) -> bytes:
    """The hub's job: add ciphertexts of equal length under ``ctx`` (public is enough).

    ``blobs`` may map site names to blobs so that a refusal names the offending site. Every
    blob is checked (fingerprint, length, chunk count, integrity) before any addition.
    """
    named: list[tuple[str | None, str, bytes]] = (
        [(site, "ciphertext", b) for site, b in blobs.items()] if isinstance(blobs, Mapping)
        else [(None, f"ciphertext #{i}", b) for i, b in enumerate(blobs)])
    if not named:
        raise ValidationError("nothing to sum: no ciphertexts were given")
    if len(named) > ctx.params.max_sites:
        raise ValidationError(f"{len(named)} ciphertexts exceed the context's max_sites "
                              f"{ctx.params.max_sites}; their sum could overflow")
    parsed = []
    for site, label, blob in named:
        try:
            header, sizes, body = _split(blob)
            _check_context(ctx, header, label)
        except ValidationError as exc:
            raise ValidationError(exc.message if site else f"{label}: {exc.message}",
                                  site=site) from exc
        parsed.append((site, label, header, sizes, body))
    first = parsed[0][2]
    first_label = f"site {parsed[0][0]}" if parsed[0][0] is not None else parsed[0][1]
    for site, label, header, _, _ in parsed[1:]:
        if (header.length, header.chunks) != (first.length, first.chunks):
            raise ValidationError(
                f"{label} holds {header.length} values in {header.chunks} chunks, but "
                f"{first_label} holds {first.length} in {first.chunks}; every site must "
                "encrypt the same layout", site=site)
    total: list[ts.CKKSVector] | None = None
    for site, label, header, sizes, body in parsed:
        try:
            vectors = _vectors(ctx, header, sizes, body, label)
            if total is None:
                total = vectors
            else:
                for acc, vec in zip(total, vectors, strict=True):
                    acc.add_(vec)
        except ValidationError as exc:
            raise ValidationError(exc.message, site=site) from exc
        except ValueError as exc:  # e.g. scale mismatch between ciphertexts
            raise ValidationError(f"{label} cannot be added: {exc}", site=site) from exc
    assert total is not None
    return _join(ctx, first.length, [v.serialize() for v in total])


# ------------------------------------------------------------------------ weighted means
def encrypt_weighted(ctx: HEContext, values: np.ndarray, weight: float) -> bytes:
    """Encrypt ``[weight * values, weight]`` (FedAvg: weight = the site's example count)."""
    if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight > 0):
        raise ValidationError(f"weight must be a finite number > 0, got {weight!r}")
    flat = np.asarray(values, dtype=np.float64)
    if flat.ndim != 1:
        raise ValidationError(f"values must be a 1-D vector, got shape {flat.shape}")
    packed = np.empty(flat.size + 1, dtype=np.float64)
    np.multiply(flat, float(weight), out=packed[:-1])
    packed[-1] = weight
    return encrypt_vector(ctx, packed)


def decrypt_weighted_mean(ctx: HEContext, blob: bytes) -> tuple[np.ndarray, float]:
    """``(sum_i w_i x_i / sum_i w_i, sum_i w_i)`` from an aggregate of weighted blobs."""
    packed = decrypt_vector(ctx, blob)
    if packed.size < 2:
        raise ValidationError("aggregate holds no weighted vector (fewer than 2 values)")
    total = float(packed[-1])
    if not total > 0.5:  # weights are example counts (>= 1); noise is ~1e-8
        raise ValidationError(f"aggregate's total weight decrypts to {total:.3g}; it was not "
                              "made by encrypt_weighted under this context")
    return packed[:-1] / total, total


def encrypt_parameters(ctx: HEContext, params: Parameters, weight: float) -> bytes:
    """A site's model update, weighted by its example count, as one encrypted blob."""
    return encrypt_weighted(ctx, params.flatten("float64"), weight)


def decrypt_mean_parameters(ctx: HEContext, blob: bytes,
                            spec: ParamSpec) -> tuple[Parameters, float]:
    """The weighted mean of the sites' parameters (in ``spec``'s layout and dtypes)."""
    mean, total = decrypt_weighted_mean(ctx, blob)
    if mean.size != spec.total_size:
        raise ValidationError(f"aggregate holds {mean.size} values, the model has "
                              f"{spec.total_size}")
    return Parameters.unflatten(mean, spec), total


# ------------------------------------------------------------------------------ internals
def _check_values(ctx: HEContext, values: np.ndarray) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValidationError(f"values must be a 1-D vector, got shape {arr.shape}")
    if arr.size == 0:
        raise ValidationError("cannot encrypt an empty vector")
    if arr.size > MAX_LENGTH:
        raise ValidationError(f"vector of {arr.size} values exceeds the limit {MAX_LENGTH}")
    if arr.dtype.kind not in "fiu":
        raise ValidationError(f"values must be numbers, got dtype {arr.dtype}")
    flat = np.ascontiguousarray(arr, dtype=np.float64)
    if not np.isfinite(flat).all():
        raise ValidationError("values contain NaN or Inf; refusing to encrypt them")
    peak = float(np.abs(flat).max())
    if peak > ctx.params.max_abs_value:
        raise ValidationError(
            f"largest |value| {peak:.3g} exceeds {ctx.params.max_abs_value:.3g}, the bound that "
            f"keeps a sum of {ctx.params.max_sites} sites from overflowing the CKKS modulus; "
            "scale the values down or use a context with more data primes")
    return flat


def _join(ctx: HEContext, length: int, pieces: Sequence[bytes]) -> bytes:
    header = {"fingerprint": ctx.fingerprint, "length": length, "chunks": len(pieces),
              "slots": ctx.params.slots}
    sizes = np.asarray([len(p) for p in pieces], dtype="<u4").tobytes()
    return frame(CIPHER_MAGIC, header, sizes, *pieces)


def _split(blob: bytes) -> tuple[CipherHeader, np.ndarray, memoryview]:
    raw, rest = unframe(blob, CIPHER_MAGIC, what="ciphertext", max_header=_MAX_HEADER)
    header = _header(raw)
    expected_chunks = -(-header.length // header.slots)
    if header.chunks != expected_chunks:
        raise ValidationError(f"ciphertext declares {header.chunks} chunks for {header.length} "
                              f"values, expected {expected_chunks} at {header.slots} slots")
    table_end = 4 * header.chunks
    if table_end > len(rest):
        raise ValidationError("ciphertext is truncated (chunk table incomplete)")
    sizes = np.frombuffer(rest[:table_end], dtype="<u4").astype(np.int64)
    body = rest[table_end:]
    if int(sizes.sum()) != len(body) or (sizes == 0).any():
        raise ValidationError(f"ciphertext is truncated or padded: chunks declare "
                              f"{int(sizes.sum())} bytes, {len(body)} present")
    return header, sizes, body


def _header(raw: object) -> CipherHeader:
    if not isinstance(raw, dict):
        raise ValidationError("ciphertext header must be a JSON object")
    fp = raw.get("fingerprint")
    ints = [raw.get(k) for k in ("length", "chunks", "slots")]
    if not isinstance(fp, str) or not all(isinstance(v, int) and not isinstance(v, bool)
                                          and v > 0 for v in ints):
        raise ValidationError("ciphertext header lacks a fingerprint or a positive length, "
                              "chunk count or slot count")
    length, chunks, slots = (int(v) for v in ints)  # type: ignore[arg-type]
    if length > MAX_LENGTH:
        raise ValidationError(f"ciphertext declares {length} values, above {MAX_LENGTH}")
    return CipherHeader(fp, length, chunks, slots)


def _check_context(ctx: HEContext, header: CipherHeader, what: str) -> None:
    if header.fingerprint != ctx.fingerprint:
        raise ValidationError(
            f"{what} was made under another HE context (fingerprint {header.fingerprint[:12]}, "
            f"this federation's is {ctx.fingerprint[:12]}); refusing it rather than producing "
            "garbage")
    if header.slots != ctx.params.slots:
        raise ValidationError(f"{what} uses {header.slots} slots, the context "
                              f"{ctx.params.slots}")


def _vectors(ctx: HEContext, header: CipherHeader, sizes: np.ndarray, body: memoryview,
             what: str) -> list[ts.CKKSVector]:
    out = []
    pos = 0
    for i, size in enumerate(sizes.tolist()):
        try:
            vec = ts.ckks_vector_from(ctx.tenseal, bytes(body[pos:pos + size]))
        except (ValueError, RuntimeError) as exc:
            raise ValidationError(f"{what} chunk {i} is corrupt: {exc}") from exc
        want = min(header.slots, header.length - i * header.slots)
        if vec.size() != want:
            raise ValidationError(f"{what} chunk {i} holds {vec.size()} values, its header "
                                  f"implies {want}")
        out.append(vec)
        pos += size
    return out
