"""Homomorphic encryption (CKKS via TenSEAL): the hub sums site updates it cannot read.

Sites share one secret context made at provisioning (:func:`create_federation_context`); the
hub holds the public context. A site encrypts ``[n_i * update_i, n_i]``
(:func:`encrypt_parameters`), the hub adds the blobs (:func:`sum_ciphertexts`), a site
decrypts the weighted mean (:func:`decrypt_mean_parameters`).
"""

from __future__ import annotations

from fedcare.privacy.he.context import HEContext, HEParams, create_federation_context
from fedcare.privacy.he.vectors import (
    CipherHeader,
    decrypt_mean_parameters,
    decrypt_vector,
    decrypt_weighted_mean,
    encrypt_parameters,
    encrypt_vector,
    encrypt_weighted,
    peek,
    sum_ciphertexts,
)

__all__ = [
    "CipherHeader",
    "HEContext",
    "HEParams",
    "create_federation_context",
    "decrypt_mean_parameters",
    "decrypt_vector",
    "decrypt_weighted_mean",
    "encrypt_parameters",
    "encrypt_vector",
    "encrypt_weighted",
    "peek",
    "sum_ciphertexts",
]
