"""The hub side of SecAgg (Bonawitz et al. 2017; Bell et al. 2020 graphs) as a state machine.

Each ``collect_*`` takes whatever arrived before the stage's deadline as ``{site: message}``
(the key is the sender the transport authenticated); a site missing from the dict dropped out at
that stage. Fewer than ``threshold`` sites at any stage aborts the round with a
:class:`ProtocolError` naming the stage. The hub routes ciphertexts it cannot read, adds masked
vectors as they are, and after unmasking holds only the sum: it never stores any single site's
masked vector, let alone an unmasked one.

Not covered (documented limits): the malicious-server consistency round of Bonawitz et al.
(signatures over U3) — fedcare's hub is honest-but-curious and sites are authenticated by
mutual TLS; a hub that lies about who dropped is prevented from learning an input only by the
sites' "never both shares" rule, not detected.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import numpy as np

from fedcare.core.errors import ProtocolError, ValidationError
from fedcare.privacy.secagg import crypto
from fedcare.privacy.secagg.client import MASK_PURPOSE
from fedcare.privacy.secagg.config import SecAggConfig
from fedcare.privacy.secagg.encoding import decode
from fedcare.privacy.secagg.messages import (
    AdvertiseKeys,
    AggregateResult,
    KeysBroadcast,
    MaskedInput,
    ShareBundle,
    ShareDelivery,
    UnmaskRequest,
    UnmaskResponse,
)


class ServerState(enum.StrEnum):
    COLLECTING_KEYS = "collecting_keys"
    COLLECTING_SHARES = "collecting_shares"
    COLLECTING_MASKED = "collecting_masked"
    COLLECTING_UNMASK = "collecting_unmask"
    DONE = "done"
    ABORTED = "aborted"


class SecAggServer:
    """The hub's part in one round; drive it with the four ``collect_*``/``finish`` calls."""

    def __init__(self, cfg: SecAggConfig) -> None:
        self.cfg = cfg
        self.state = ServerState.COLLECTING_KEYS
        self._keys: dict[str, tuple[bytes, bytes]] = {}  # U1
        self._u2: tuple[str, ...] = ()
        self._u3: tuple[str, ...] = ()
        self._dropped: tuple[str, ...] = ()
        self._total: np.ndarray | None = None

    # ------------------------------------------------------------------ plumbing
    def _enter(self, expected: ServerState, stage: str) -> None:
        if self.state is not expected:
            raise ProtocolError(f"{stage} called in state {self.state.value}; it needs "
                                f"{expected.value} (stages run once, in order)")

    def _senders(self, msgs: Mapping[str, object], allowed: tuple[str, ...] | set[str],
                 kind: type, stage: str) -> tuple[str, ...]:
        """Validate who sent what; returns senders in round order. Aborts below threshold."""
        if not isinstance(msgs, Mapping):
            raise self._abort(ValidationError(f"{stage}: expected a dict site -> message"))
        for site, msg in msgs.items():
            if not self.cfg.has_site(site):
                raise self._abort(ProtocolError(f"{stage}: message from {site!r}, which is not "
                                                f"part of this round", site=str(site)))
            if site not in allowed:
                raise self._abort(ProtocolError(f"{stage}: {site} dropped out at an earlier "
                                                f"stage and cannot rejoin", site=site))
            if not isinstance(msg, kind):
                raise self._abort(ValidationError(f"{stage}: expected {kind.__name__}, got "
                                                  f"{type(msg).__name__}", site=site))
            claimed = getattr(msg, "site", site)
            if claimed != site:
                raise self._abort(ProtocolError(f"{stage}: message claims to come from "
                                                f"{claimed!r} (replayed or forwarded)",
                                                site=site))
        senders = tuple(sorted(msgs, key=self.cfg.index))
        if len(senders) < self.cfg.threshold:
            raise self._abort(ProtocolError(
                f"{stage}: only {len(senders)} of {self.cfg.n} sites took part, threshold is "
                f"{self.cfg.threshold}: round aborted"))
        return senders

    def _abort(self, exc: Exception) -> Exception:
        self.state = ServerState.ABORTED
        self._total = None
        return exc

    # ------------------------------------------------------------------ stage 1
    def collect_keys(self, msgs: Mapping[str, AdvertiseKeys]) -> dict[str, KeysBroadcast]:
        """U1 = sites that advertised; each gets the keys of its neighbourhood within U1."""
        self._enter(ServerState.COLLECTING_KEYS, "collect_keys")
        senders = self._senders(msgs, set(self.cfg.sites), AdvertiseKeys, "advertise_keys")
        owner: dict[bytes, str] = {}
        for site in senders:
            m = msgs[site]
            for pk in (m.c_pk, m.s_pk):
                if len(pk) != crypto.KEY_BYTES:
                    raise self._abort(ValidationError("advertise_keys: public keys must be "
                                                      f"{crypto.KEY_BYTES} bytes", site=site))
                if pk in owner:
                    raise self._abort(ProtocolError(
                        f"advertise_keys: public key already advertised by {owner[pk]} "
                        f"(replayed keys): round aborted", site=site))
                owner[pk] = site
        self._keys = {s: (msgs[s].c_pk, msgs[s].s_pk) for s in senders}
        self.state = ServerState.COLLECTING_SHARES
        return {u: KeysBroadcast({v: self._keys[v] for v in self.cfg.share_holders(u)
                                  if v in self._keys}) for u in senders}

    # ------------------------------------------------------------------ stage 2
    def collect_shares(self, bundles: Mapping[str, ShareBundle]) -> dict[str, ShareDelivery]:
        """U2 = sites that shared; route each ciphertext to its recipient (unread)."""
        self._enter(ServerState.COLLECTING_SHARES, "collect_shares")
        senders = self._senders(bundles, set(self._keys), ShareBundle, "share_keys")
        for u in senders:
            want = {v for v in self.cfg.neighbours(u) if v in self._keys}
            got = set(bundles[u].ciphertexts)
            if got != want:
                odd = sorted(got ^ want, key=self.cfg.index)[0]
                raise self._abort(ProtocolError(
                    f"share_keys: bundle must hold one ciphertext per neighbour that advertised"
                    f" keys; {odd!r} is {'extra' if odd in got else 'missing'}", site=u))
            bad = [v for v, c in bundles[u].ciphertexts.items()
                   if not isinstance(c, bytes) or len(c) != crypto.CIPHERTEXT_BYTES]
            if bad:
                raise self._abort(ValidationError(f"share_keys: ciphertext for {bad[0]!r} must "
                                                  f"be {crypto.CIPHERTEXT_BYTES} bytes", site=u))
        self._u2 = senders
        self.state = ServerState.COLLECTING_MASKED
        return {v: ShareDelivery(v, {u: bundles[u].ciphertexts[v] for u in senders
                                     if v in bundles[u].ciphertexts}) for v in senders}

    # ------------------------------------------------------------------ stage 3
    def collect_masked(self, msgs: Mapping[str, MaskedInput]) -> UnmaskRequest:
        """U3 = sites that sent a masked input; their vectors are summed at once (mod 2^k)."""
        self._enter(ServerState.COLLECTING_MASKED, "collect_masked")
        senders = self._senders(msgs, set(self._u2), MaskedInput, "masked_input")
        cfg = self.cfg
        for u in senders:
            m = msgs[u].masked
            if (not isinstance(m, np.ndarray) or m.dtype != cfg.dtype
                    or m.shape != (cfg.vector_length,)):
                raise self._abort(ValidationError(
                    f"masked_input: masked vector must be {cfg.dtype} of shape "
                    f"({cfg.vector_length},), got "
                    f"{getattr(m, 'dtype', type(m).__name__)} {getattr(m, 'shape', '')}",
                    site=u))
        total = np.zeros(cfg.vector_length, cfg.dtype)
        for u in senders:
            np.add(total, msgs[u].masked, out=total)
        self._total = total
        self._u3 = senders
        self._dropped = tuple(u for u in self._u2 if u not in senders)
        self.state = ServerState.COLLECTING_UNMASK
        return UnmaskRequest(self._u3, self._dropped)

    # ------------------------------------------------------------------ stage 4
    def finish(self, responses: Mapping[str, UnmaskResponse]) -> AggregateResult:
        """Rebuild b_v of survivors and s_v^SK of dropped sites, strip all masks, decode."""
        self._enter(ServerState.COLLECTING_UNMASK, "finish")
        senders = self._senders(responses, set(self._u3), UnmaskResponse, "unmask")
        cfg = self.cfg
        u3, dropped = set(self._u3), set(self._dropped)
        b_pts: dict[str, dict[int, int]] = {v: {} for v in self._u3}
        s_pts: dict[str, dict[int, int]] = {v: {} for v in self._dropped}
        for w in senders:
            r = responses[w]
            both = set(r.self_mask_shares) & set(r.key_shares)
            if both:
                raise self._abort(ProtocolError(
                    f"unmask: response carries both shares of {sorted(both)[0]!r}; discarded",
                    site=w))
            for owners, allowed, pts in ((r.self_mask_shares, u3, b_pts),
                                         (r.key_shares, dropped, s_pts)):
                for v, value in owners.items():
                    if v not in allowed or w not in cfg.share_holders(v):
                        raise self._abort(ProtocolError(
                            f"unmask: unexpected share of {v!r}", site=w))
                    pts[v][cfg.share_holders(v).index(w) + 1] = value
        assert self._total is not None
        total = self._total
        prg = crypto.MaskStream(cfg.vector_length, cfg.dtype)
        t = cfg.share_threshold
        try:
            for v in self._u3:
                prg.add(total, crypto.combine(b_pts[v], t, owner=v), -1)
            for v in self._dropped:
                self._remove_pair_masks(total, prg, v, crypto.combine(s_pts[v], t, owner=v))
        except ProtocolError as exc:
            raise self._abort(ProtocolError(f"unmask: {exc.message}", site=exc.site)) from None
        result = AggregateResult(decode(total, cfg), self._u3)
        self._total = None
        self.state = ServerState.DONE
        return result

    def _remove_pair_masks(self, total: np.ndarray, prg: crypto.MaskStream, v: str,
                           s_sk_raw: bytes) -> None:
        """Cancel the masks surviving neighbours w added for the dropped site v."""
        cfg = self.cfg
        s_sk = crypto.X25519PrivateKey.from_private_bytes(s_sk_raw)
        if crypto.public_bytes(s_sk) != self._keys[v][1]:
            raise ProtocolError("reconstructed mask key does not match the advertised public "
                                "key (corrupted shares)", site=v)
        vi = cfg.index(v)
        for w in cfg.neighbours(v):
            if w in self._u3:
                wi = cfg.index(w)
                seed = crypto.pair_key(s_sk, self._keys[w][1], MASK_PURPOSE, cfg.digest,
                                       vi, wi, peer=w)
                # w added +PRG if wi < vi, else subtracted it: undo that.
                prg.add(total, seed, -1 if wi < vi else +1)
