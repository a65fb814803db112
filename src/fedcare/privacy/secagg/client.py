"""The site side of SecAgg (Bonawitz et al. 2017, Fig. 4, semi-honest variant) as a state machine.

One :class:`SecAggClient` per site per round. Each stage is one method; calling it in the wrong
state raises :class:`ProtocolError` and leaves the state alone. Any other failure inside a stage
moves the client to ``ABORTED`` for good (fail closed: a client that saw something wrong never
reveals anything afterwards). No I/O: the caller carries the messages.

The one rule that protects a site's input: in the unmasking stage a site reveals, for each
neighbour v, either the share of v's self-mask seed b_v (v sent a masked input) or the share of
v's mask key s_v^SK (v did not) — never both, and only once per round. With both the hub could
strip every mask from v's vector.

Client secrets live in memory only; persisting a client across a node restart is not
supported (the round simply treats that site as dropped).
"""

from __future__ import annotations

import enum
import os

import numpy as np

from fedcare.core.errors import FedcareError, ProtocolError
from fedcare.privacy.secagg import crypto
from fedcare.privacy.secagg.config import SecAggConfig
from fedcare.privacy.secagg.encoding import encode
from fedcare.privacy.secagg.messages import (
    AdvertiseKeys,
    KeysBroadcast,
    MaskedInput,
    ShareBundle,
    ShareDelivery,
    UnmaskRequest,
    UnmaskResponse,
)

SHARE_PURPOSE = b"share-encryption"
MASK_PURPOSE = b"pairwise-mask"


class ClientState(enum.StrEnum):
    NEW = "new"
    KEYS_ADVERTISED = "keys_advertised"
    SHARES_SENT = "shares_sent"
    INPUT_MASKED = "input_masked"
    DONE = "done"
    ABORTED = "aborted"


class SecAggClient:
    """One site's part in one round. ``rng`` (bytes source) is for tests; default: OS CSPRNG.

    Shamir coefficients always come from ``secrets`` (inside ``shamirs``).
    """

    def __init__(self, cfg: SecAggConfig, site: str, rng: crypto.RandBytes | None = None) -> None:
        if not cfg.has_site(site):
            raise ProtocolError(f"site {site!r} is not part of secure-aggregation round "
                                f"{cfg.round_id}")
        self.cfg = cfg
        self.site = site
        self.state = ClientState.NEW
        self._rng = rng or os.urandom
        self._me = cfg.index(site)
        self._holders = cfg.share_holders(site)
        self._c_sk = self._s_sk = None  # type: crypto.X25519PrivateKey | None
        self._peer_keys: dict[str, tuple[bytes, bytes]] = {}
        self._b: bytes = b""
        self._own_shares: tuple[int, int] = (0, 0)
        self._held: dict[str, tuple[int, int]] = {}  # owner -> (share of b, share of s^SK)

    # ------------------------------------------------------------------ plumbing
    def _enter(self, expected: ClientState, stage: str) -> None:
        if self.state is not expected:
            raise ProtocolError(f"{stage} called in state {self.state.value}; it needs "
                                f"{expected.value} (stages run once, in order)", site=self.site)

    def _fail(self, exc: FedcareError) -> FedcareError:
        self.state = ClientState.ABORTED
        self._b, self._held, self._c_sk, self._s_sk = b"", {}, None, None
        return exc

    # ------------------------------------------------------------------ stage 1
    def advertise_keys(self) -> AdvertiseKeys:
        """Two fresh X25519 key pairs: c (encrypts shares), s (agrees pairwise mask seeds)."""
        self._enter(ClientState.NEW, "advertise_keys")
        self._c_sk = crypto.new_private_key(self._rng)
        self._s_sk = crypto.new_private_key(self._rng)
        self.state = ClientState.KEYS_ADVERTISED
        return AdvertiseKeys(self.site, crypto.public_bytes(self._c_sk),
                             crypto.public_bytes(self._s_sk))

    # ------------------------------------------------------------------ stage 2
    def share_keys(self, broadcast: KeysBroadcast) -> ShareBundle:
        """Shamir-share b_u and s_u^SK among the neighbourhood; encrypt each pair of shares."""
        self._enter(ClientState.KEYS_ADVERTISED, "share_keys")
        try:
            return self._share_keys(broadcast)
        except FedcareError as exc:
            raise self._fail(exc) from None

    def _share_keys(self, broadcast: KeysBroadcast) -> ShareBundle:
        cfg = self.cfg
        assert self._c_sk is not None and self._s_sk is not None
        keys = dict(broadcast.keys)
        outside = [s for s in keys if s not in self._holders]
        if outside:
            raise ProtocolError(f"share_keys: broadcast holds keys of {outside[0]!r}, which is "
                                f"not a neighbour", site=self.site)
        mine = (crypto.public_bytes(self._c_sk), crypto.public_bytes(self._s_sk))
        if keys.get(self.site) != mine:
            raise ProtocolError("share_keys: the broadcast does not carry this site's own "
                                "public keys unchanged", site=self.site)
        seen: dict[bytes, str] = {}
        for s, pair in keys.items():
            for pk in pair:
                if pk in seen:
                    raise ProtocolError(f"share_keys: public key reused by {seen[pk]!r} and "
                                        f"{s!r} (replayed keys)", site=self.site)
                seen[pk] = s
        self._check_enough(len(keys), "share_keys")
        self._peer_keys = {s: v for s, v in keys.items() if s != self.site}
        self._b = self._rng(crypto.KEY_BYTES)
        t = cfg.share_threshold
        b_sh = crypto.split(self._b, len(self._holders), t)
        s_sh = crypto.split(crypto.private_bytes(self._s_sk), len(self._holders), t)
        out: dict[str, bytes] = {}
        for pos, holder in enumerate(self._holders):
            if holder == self.site:
                self._own_shares = (b_sh[pos], s_sh[pos])
            elif holder in self._peer_keys:
                v = cfg.index(holder)
                key = crypto.pair_key(self._c_sk, self._peer_keys[holder][0], SHARE_PURPOSE,
                                      cfg.digest, self._me, v, peer=holder)
                plain = crypto.share_to_bytes(b_sh[pos]) + crypto.share_to_bytes(s_sh[pos])
                out[holder] = crypto.seal(key, cfg.digest, self._me, v, plain, self._rng)
        self.state = ClientState.SHARES_SENT
        return ShareBundle(self.site, out)

    def _check_enough(self, count: int, stage: str) -> None:
        """Abort when fewer than t_k of the neighbourhood remain (nothing could be unmasked)."""
        if count < self.cfg.share_threshold:
            raise ProtocolError(f"{stage}: only {count} of this site's neighbourhood remain, "
                                f"threshold is {self.cfg.share_threshold}: aborting the round",
                                site=self.site)

    # ------------------------------------------------------------------ stage 3
    def masked_input(self, vector: np.ndarray, delivery: ShareDelivery) -> MaskedInput:
        """Decrypt the shares addressed to us, then mask the encoded vector."""
        self._enter(ClientState.SHARES_SENT, "masked_input")
        try:
            return self._masked_input(vector, delivery)
        except FedcareError as exc:
            raise self._fail(exc) from None

    def _masked_input(self, vector: np.ndarray, delivery: ShareDelivery) -> MaskedInput:
        cfg = self.cfg
        assert self._c_sk is not None and self._s_sk is not None
        if delivery.recipient != self.site:
            raise ProtocolError(f"masked_input: shares addressed to {delivery.recipient!r} "
                                f"were delivered here", site=self.site)
        acc = encode(vector, cfg, site=self.site)  # validate input before using any secret
        for sender, ct in delivery.ciphertexts.items():
            if sender not in self._peer_keys:
                raise ProtocolError(f"masked_input: share from {sender!r}, which did not "
                                    f"advertise keys to this site", site=self.site)
            key = crypto.pair_key(self._c_sk, self._peer_keys[sender][0], SHARE_PURPOSE,
                                  cfg.digest, cfg.index(sender), self._me, peer=sender)
            plain = crypto.open_sealed(key, cfg.digest, cfg.index(sender), self._me, ct,
                                       sender_site=sender)
            half = crypto.SHARE_BYTES
            self._held[sender] = (crypto.share_from_bytes(plain[:half], site=sender),
                                  crypto.share_from_bytes(plain[half:], site=sender))
        self._check_enough(len(self._held) + 1, "masked_input")
        prg = crypto.MaskStream(cfg.vector_length, cfg.dtype)
        prg.add(acc, self._b, +1)
        for v in self._held:  # U2 ∩ N(u): those who shared with us
            vi = cfg.index(v)
            seed = crypto.pair_key(self._s_sk, self._peer_keys[v][1], MASK_PURPOSE, cfg.digest,
                                   self._me, vi, peer=v)
            prg.add(acc, seed, +1 if self._me < vi else -1)
        self.state = ClientState.INPUT_MASKED
        return MaskedInput(self.site, acc)

    # ------------------------------------------------------------------ stage 4
    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Shares of b_v for surviving neighbours, of s_v^SK for dropped ones; never both."""
        self._enter(ClientState.INPUT_MASKED, "unmask")
        try:
            return self._unmask(request)
        except FedcareError as exc:
            raise self._fail(exc) from None

    def _unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        survivors, dropped = set(request.survivors), set(request.dropped)
        both = sorted(survivors & dropped, key=self.cfg.index)
        if both:
            raise ProtocolError(f"unmask: asked for both the self-mask share and the key share "
                                f"of {both[0]!r}; refusing (it would reveal that site's input)",
                                site=self.site)
        if self.site not in survivors:
            raise ProtocolError("unmask: this site sent its masked input but is not listed "
                                "as a survivor", site=self.site)
        if len(survivors) < self.cfg.threshold:
            raise ProtocolError(f"unmask: only {len(survivors)} survivors, threshold is "
                                f"{self.cfg.threshold}: aborting the round", site=self.site)
        b_out: dict[str, int] = {self.site: self._own_shares[0]}
        s_out: dict[str, int] = {}
        for v, (b_share, s_share) in self._held.items():
            if v in survivors:
                b_out[v] = b_share
            elif v in dropped:
                s_out[v] = s_share
            else:
                raise ProtocolError(f"unmask: neighbour {v!r} is neither a survivor nor "
                                    f"dropped", site=self.site)
        unknown = [v for v in (survivors | dropped) & set(self.cfg.neighbours(self.site))
                   if v not in self._held]
        if unknown:
            raise ProtocolError(f"unmask: {unknown[0]!r} never shared its keys with this site "
                                f"but is listed in the unmask request", site=self.site)
        self.state = ClientState.DONE
        self._held, self._b, self._c_sk, self._s_sk = {}, b"", None, None
        return UnmaskResponse(self.site, b_out, s_out)
