"""Homomorphic encryption (CKKS via TenSEAL): the hub sums site updates it cannot read.

Sites share one secret context made at provisioning (:func:`create_federation_context`); the
hub holds the public context. In the round engine (:mod:`fedcare.engine.secure`) a site
encrypts ``[n_i * (x_i - g), n_i]`` (:func:`encrypt_vector`), the hub adds the blobs
(:func:`sum_ciphertexts`), and one participating site decrypts the SUM and returns it, so the
hub learns the aggregate (and the total example count) but no single site's update. Each
site's own example count also reaches the hub in clear with its update's metadata.
The ``*_weighted`` / ``*_parameters`` helpers decrypt a weighted mean at a site instead.
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
