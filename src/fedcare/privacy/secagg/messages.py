"""The messages of one SecAgg round, each encodable as ``{name: np.ndarray}`` and as bytes.

Sites travel as their index in :attr:`SecAggConfig.sites` (uint32), keys, shares and
ciphertexts as uint8 rows, the round id as int64, masked vectors as uint32/uint64. That lets the
engine carry a message as auxiliary arrays of the existing task/update wire format;
``to_bytes`` is the same dict as a safetensors blob. ``from_arrays``/``from_bytes`` validate
strictly against the round's config (names, dtypes, shapes, index ranges, duplicates) and raise
:class:`ValidationError`; a message of another round raises :class:`ProtocolError` (a replay).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from fedcare.core.errors import ProtocolError, ValidationError
from fedcare.privacy.secagg.config import SecAggConfig
from fedcare.privacy.secagg.crypto import CIPHERTEXT_BYTES, KEY_BYTES, PRIME, SHARE_BYTES

Arrays = dict[str, np.ndarray]
_U32, _U8, _I64 = np.dtype("<u4"), np.dtype("u1"), np.dtype("<i8")


class _Message:
    """Shared encoding: subclasses define ``KEYS``, ``_arrays`` and ``_parse``."""

    KEYS: ClassVar[frozenset[str]]

    def _arrays(self, cfg: SecAggConfig) -> Arrays:
        raise NotImplementedError

    @classmethod
    def _parse(cls, d: Mapping[str, np.ndarray], cfg: SecAggConfig) -> Self:
        raise NotImplementedError

    def to_arrays(self, cfg: SecAggConfig) -> Arrays:
        return {"round": np.array([cfg.round_id], _I64), **self._arrays(cfg)}

    def to_bytes(self, cfg: SecAggConfig) -> bytes:
        return st_save(self.to_arrays(cfg))

    @classmethod
    def from_arrays(cls, d: Mapping[str, Any], *, cfg: SecAggConfig) -> Self:
        name = cls.__name__
        if not isinstance(d, Mapping):
            raise ValidationError(f"{name}: expected a dict of arrays, got {type(d).__name__}")
        keys = set(d)
        if keys != cls.KEYS | {"round"}:
            raise ValidationError(f"{name}: arrays must be exactly "
                                  f"{sorted(cls.KEYS | {'round'})}, got {sorted(map(str, keys))}")
        rnd = _arr(d, "round", _I64, (1,), name)
        if int(rnd[0]) != cfg.round_id:
            raise ProtocolError(f"{name} belongs to round {int(rnd[0])}, this is round "
                                f"{cfg.round_id} (replayed or late message): refusing it")
        return cls._parse(d, cfg)

    @classmethod
    def from_bytes(cls, data: bytes, *, cfg: SecAggConfig) -> Self:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValidationError(f"{cls.__name__}: expected bytes, got {type(data).__name__}")
        try:
            d = st_load(bytes(data))
        except Exception as exc:
            raise ValidationError(f"{cls.__name__}: payload is not a valid array blob: "
                                  f"{exc}") from exc
        return cls.from_arrays(d, cfg=cfg)


# --------------------------------------------------------------------------- helpers
def _arr(d: Mapping[str, Any], key: str, dtype: np.dtype, shape: tuple[int | None, ...],
         msg: str) -> np.ndarray:
    a = d[key]
    if not isinstance(a, np.ndarray):
        raise ValidationError(f"{msg}.{key}: expected a numpy array, got {type(a).__name__}")
    if a.dtype != dtype:
        raise ValidationError(f"{msg}.{key}: dtype must be {dtype}, got {a.dtype}")
    if a.ndim != len(shape) or any(w is not None and w != g for w, g in zip(shape, a.shape,
                                                                             strict=True)):
        want = tuple("?" if w is None else w for w in shape)
        raise ValidationError(f"{msg}.{key}: shape must be {want}, got {a.shape}")
    return a


def _sites(a: np.ndarray, cfg: SecAggConfig, msg: str, key: str) -> tuple[str, ...]:
    idx = [int(i) for i in a]
    bad = [i for i in idx if i >= cfg.n]
    if bad:
        raise ValidationError(f"{msg}.{key}: site index {bad[0]} is outside the round "
                              f"({cfg.n} sites)")
    if len(set(idx)) != len(idx):
        raise ValidationError(f"{msg}.{key}: a site is listed twice")
    return tuple(cfg.sites[i] for i in idx)


def _site(d: Mapping[str, Any], cfg: SecAggConfig, msg: str, key: str = "site") -> str:
    return _sites(_arr(d, key, _U32, (1,), msg), cfg, msg, key)[0]


def _idx(cfg: SecAggConfig, sites: tuple[str, ...] | list[str]) -> np.ndarray:
    return np.array([cfg.index(s) for s in sites], _U32)


def _rows(values: list[bytes], width: int) -> np.ndarray:
    if not values:
        return np.zeros((0, width), _U8)
    return np.frombuffer(b"".join(values), _U8).reshape(len(values), width).copy()


def _shares_out(shares: Mapping[str, int], cfg: SecAggConfig) -> tuple[np.ndarray, np.ndarray]:
    owners = sorted(shares, key=cfg.index)
    return _idx(cfg, owners), _rows([shares[o].to_bytes(SHARE_BYTES, "little")
                                     for o in owners], SHARE_BYTES)


def _shares_in(d: Mapping[str, Any], cfg: SecAggConfig, msg: str, okey: str,
               vkey: str) -> dict[str, int]:
    owners = _sites(_arr(d, okey, _U32, (None,), msg), cfg, msg, okey)
    rows = _arr(d, vkey, _U8, (len(owners), SHARE_BYTES), msg)
    out = {}
    for o, row in zip(owners, rows, strict=True):
        v = int.from_bytes(row.tobytes(), "little")
        if v >= PRIME:
            raise ValidationError(f"{msg}.{vkey}: share of {o} is not a field element")
        out[o] = v
    return out


# --------------------------------------------------------------------------- messages
@dataclass(frozen=True)
class AdvertiseKeys(_Message):
    """Stage 1, site -> hub: the site's two fresh X25519 public keys for this round.

    Unsigned: the hub and sites authenticate each other by mutual TLS, and the hub is trusted to
    relay keys honestly (honest-but-curious model, Bonawitz et al. 2017 §4, semi-honest variant).
    """

    site: str
    c_pk: bytes  # encrypts shares (Bonawitz's c_u)
    s_pk: bytes  # agrees pairwise mask seeds (Bonawitz's s_u)

    KEYS: ClassVar[frozenset[str]] = frozenset({"site", "c_pk", "s_pk"})

    def _arrays(self, cfg: SecAggConfig) -> Arrays:
        return {"site": _idx(cfg, [self.site]), "c_pk": np.frombuffer(self.c_pk, _U8).copy(),
                "s_pk": np.frombuffer(self.s_pk, _U8).copy()}

    @classmethod
    def _parse(cls, d: Mapping[str, np.ndarray], cfg: SecAggConfig) -> Self:
        n = "AdvertiseKeys"
        return cls(_site(d, cfg, n), _arr(d, "c_pk", _U8, (KEY_BYTES,), n).tobytes(),
                   _arr(d, "s_pk", _U8, (KEY_BYTES,), n).tobytes())


@dataclass(frozen=True)
class KeysBroadcast(_Message):
    """Stage 1, hub -> site: public keys of the site's neighbourhood that advertised (incl. own)."""

    keys: Mapping[str, tuple[bytes, bytes]]  # site -> (c_pk, s_pk)

    KEYS: ClassVar[frozenset[str]] = frozenset({"sites", "c_pk", "s_pk"})

    def _arrays(self, cfg: SecAggConfig) -> Arrays:
        order = sorted(self.keys, key=cfg.index)
        return {"sites": _idx(cfg, order),
                "c_pk": _rows([self.keys[s][0] for s in order], KEY_BYTES),
                "s_pk": _rows([self.keys[s][1] for s in order], KEY_BYTES)}

    @classmethod
    def _parse(cls, d: Mapping[str, np.ndarray], cfg: SecAggConfig) -> Self:
        n = "KeysBroadcast"
        sites = _sites(_arr(d, "sites", _U32, (None,), n), cfg, n, "sites")
        c = _arr(d, "c_pk", _U8, (len(sites), KEY_BYTES), n)
        s = _arr(d, "s_pk", _U8, (len(sites), KEY_BYTES), n)
        return cls({site: (c[i].tobytes(), s[i].tobytes()) for i, site in enumerate(sites)})


def _ciphertexts_out(cfg: SecAggConfig, site: str, peers_key: str,
                     ciphertexts: Mapping[str, bytes]) -> Arrays:
    """One site's stage-2 ciphertexts, by peer (recipients or senders: the two directions
    of the same exchange carry the same layout)."""
    order = sorted(ciphertexts, key=cfg.index)
    return {"site": _idx(cfg, [site]), peers_key: _idx(cfg, order),
            "ciphertexts": _rows([ciphertexts[p] for p in order], CIPHERTEXT_BYTES)}


def _ciphertexts_in(d: Mapping[str, np.ndarray], cfg: SecAggConfig, msg: str,
                    peers_key: str) -> tuple[str, dict[str, bytes]]:
    peers = _sites(_arr(d, peers_key, _U32, (None,), msg), cfg, msg, peers_key)
    ct = _arr(d, "ciphertexts", _U8, (len(peers), CIPHERTEXT_BYTES), msg)
    return _site(d, cfg, msg), {p: ct[i].tobytes() for i, p in enumerate(peers)}


@dataclass(frozen=True)
class ShareBundle(_Message):
    """Stage 2, site -> hub: one AEAD ciphertext of (share of b_u, of s_u^SK) per neighbour."""

    site: str
    ciphertexts: Mapping[str, bytes]  # recipient -> ciphertext

    KEYS: ClassVar[frozenset[str]] = frozenset({"site", "recipients", "ciphertexts"})

    def _arrays(self, cfg: SecAggConfig) -> Arrays:
        return _ciphertexts_out(cfg, self.site, "recipients", self.ciphertexts)

    @classmethod
    def _parse(cls, d: Mapping[str, np.ndarray], cfg: SecAggConfig) -> Self:
        return cls(*_ciphertexts_in(d, cfg, "ShareBundle", "recipients"))


@dataclass(frozen=True)
class ShareDelivery(_Message):
    """Stage 2, hub -> site: the ciphertexts other sites addressed to ``recipient``."""

    recipient: str
    ciphertexts: Mapping[str, bytes]  # sender -> ciphertext

    KEYS: ClassVar[frozenset[str]] = frozenset({"site", "senders", "ciphertexts"})

    def _arrays(self, cfg: SecAggConfig) -> Arrays:
        return _ciphertexts_out(cfg, self.recipient, "senders", self.ciphertexts)

    @classmethod
    def _parse(cls, d: Mapping[str, np.ndarray], cfg: SecAggConfig) -> Self:
        return cls(*_ciphertexts_in(d, cfg, "ShareDelivery", "senders"))


@dataclass(frozen=True)
class MaskedInput(_Message):
    """Stage 3, site -> hub: encode(x_u) + PRG(b_u) + Σ_v ±PRG(s_uv)  (mod 2^k)."""

    site: str
    masked: np.ndarray

    KEYS: ClassVar[frozenset[str]] = frozenset({"site", "masked"})

    def _arrays(self, cfg: SecAggConfig) -> Arrays:
        return {"site": _idx(cfg, [self.site]), "masked": self.masked}

    @classmethod
    def _parse(cls, d: Mapping[str, np.ndarray], cfg: SecAggConfig) -> Self:
        n = "MaskedInput"
        return cls(_site(d, cfg, n), _arr(d, "masked", cfg.dtype, (cfg.vector_length,), n))


@dataclass(frozen=True)
class UnmaskRequest(_Message):
    """Stage 4, hub -> site: who sent a masked input (survivors) and who did not (dropped)."""

    survivors: tuple[str, ...]
    dropped: tuple[str, ...]

    KEYS: ClassVar[frozenset[str]] = frozenset({"survivors", "dropped"})

    def _arrays(self, cfg: SecAggConfig) -> Arrays:
        return {"survivors": _idx(cfg, self.survivors), "dropped": _idx(cfg, self.dropped)}

    @classmethod
    def _parse(cls, d: Mapping[str, np.ndarray], cfg: SecAggConfig) -> Self:
        n = "UnmaskRequest"
        return cls(_sites(_arr(d, "survivors", _U32, (None,), n), cfg, n, "survivors"),
                   _sites(_arr(d, "dropped", _U32, (None,), n), cfg, n, "dropped"))


@dataclass(frozen=True)
class UnmaskResponse(_Message):
    """Stage 4, site -> hub: shares of b_v for surviving v, of s_v^SK for dropped v (never both)."""

    site: str
    self_mask_shares: Mapping[str, int]  # owner -> share of b_owner
    key_shares: Mapping[str, int]  # owner -> share of s_owner^SK

    KEYS: ClassVar[frozenset[str]] = frozenset({"site", "b_owners", "b_shares", "s_owners",
                                                "s_shares"})

    def _arrays(self, cfg: SecAggConfig) -> Arrays:
        bo, bs = _shares_out(self.self_mask_shares, cfg)
        so, ss = _shares_out(self.key_shares, cfg)
        return {"site": _idx(cfg, [self.site]), "b_owners": bo, "b_shares": bs,
                "s_owners": so, "s_shares": ss}

    @classmethod
    def _parse(cls, d: Mapping[str, np.ndarray], cfg: SecAggConfig) -> Self:
        n = "UnmaskResponse"
        return cls(_site(d, cfg, n), _shares_in(d, cfg, n, "b_owners", "b_shares"),
                   _shares_in(d, cfg, n, "s_owners", "s_shares"))


@dataclass(frozen=True)
class AggregateResult:
    """The hub's only output: the decoded sum over ``included`` sites (float64)."""

    sum: np.ndarray
    included: tuple[str, ...]
