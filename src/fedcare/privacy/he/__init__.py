"""Homomorphic encryption (CKKS via TenSEAL): the hub sums site updates it cannot read.

The sites of a study share one secret context, made by the study's first site and sealed to
each other site's certificate key (:mod:`fedcare.engine.ckks_custody`); neither the hub nor the
federation's coordinator ever holds it. In the round engine (:mod:`fedcare.engine.secure`) a
site encrypts ``[n_i * (x_i - g), n_i]`` (:func:`encrypt_vector`) and signs the ciphertext;
one participating site receives the signed ciphertexts, verifies them, adds them
(:func:`sum_ciphertexts`) and decrypts only that SUM, so the hub learns the aggregate (and the
total example count) but no single site's update. Each site's own example count also reaches
the hub in clear with its update's metadata.
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
