"""Secure aggregation in the round loop: the hub learns the sum of the sites' updates, never
one site's update.

A secure round is the usual fit exchange followed by protocol steps, each one more exchange
of tasks and replies over the same transport (so it runs identically in simulation and over
HTTPS). Each site contributes the vector ``[w·(x − g), w]``: its example count ``w`` times
the difference between its trained model ``x`` and the global model ``g``, followed by ``w``
itself, so the sum gives the example-weighted FedAvg mean ``Σ w·(x − g) / Σ w``.

* ``secagg`` / ``secagg+`` — Bonawitz et al. (CCS 2017) pairwise masking with Shamir-shared
  keys for dropout recovery, on a complete or a sparse (Bell et al., CCS 2020) graph; steps:
  fit (keys) -> ``sa_share`` -> ``sa_mask`` -> ``sa_unmask``.
* ``ckks`` — homomorphic encryption (CKKS, TenSEAL): sites encrypt with the study's secret
  context (made and shared among the sites, :mod:`fedcare.engine.ckks_custody`) and sign their
  ciphertexts; one participating site receives the signed ciphertexts (``he_decrypt``),
  verifies them, adds them itself and returns the decrypted sum.

The protocols themselves (:mod:`fedcare.privacy.secagg`, :mod:`fedcare.privacy.he`) are pure
state machines; this module only routes their messages.

A hub killed mid-round loses the protocol's state (its half of the keys' routing, the masked
sum). The round cannot continue, so a restarted hub runs its protocol again from the fit step
as a new *attempt*: new task ids (``study/r{round}/a{attempt}/...``, so a late reply to the old
attempt is never taken for one to the new), fresh keys at every site. Each site enters the
contribution it stored for the round (trained once; under DP clipped, noised and charged once)
and reveals the round's sum over one set of sites only (see :class:`SecureSite`).

Survivor threshold: ``t = max(min_completed, ⌊n/2⌋ + 1, ⌈threshold·n⌉)`` of a round's ``n``
sites (:func:`fedcare.privacy.secagg.config.survivor_threshold`), so a study with
``min_completed = 2`` of 3 sites survives one dropout, and never below a strict majority.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from fedcare.core.errors import ConfigError, FedcareError, ProtocolError
from fedcare.core.messages import Task, TaskKind, Update
from fedcare.core.params import Parameters

if TYPE_CHECKING:
    from fedcare.engine.ckks_custody import LocalTrust, SiteIdentity, StudyKeys

#: Aux name under which protocol messages travel in tasks and replies.
PROTOCOL_AUX = "sp"
#: Task meta key: which run of a round's protocol a task belongs to (1, then 2, 3... when a
#: restarted hub runs the round's protocol again from its fit step, with fresh keys).
ATTEMPT = "attempt"
PROTOCOLS = ("secagg", "secagg+", "ckks")


@dataclass(frozen=True)
class SecureSettings:
    """A study's secure-aggregation choice (the ``[secure_aggregation]`` config section).

    ``threshold`` is the share of a round's participants that must survive every step (None:
    derived from ``min_completed``, the study's ``strategy.min_completed``); either way at
    least a strict majority, which the protocol requires (see :func:`survivor_threshold`).
    """

    protocol: str
    threshold: float | None = None
    frac_bits: int = 24
    mod_bits: int = 64
    #: One secret CKKS context for every site (simulations and tests only); a networked site
    #: gets its study's key from the other sites instead (``SecureSite(keys=...)``).
    he_context: bytes | None = field(default=None, repr=False)
    min_completed: int = 1

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"secure_aggregation.protocol must be one of {PROTOCOLS}, "
                              f"got {self.protocol!r}")
        if self.threshold is not None and not 0.5 < self.threshold <= 1:
            raise ConfigError("secure_aggregation.threshold must be in (0.5, 1] (a strict "
                              "majority of the round's sites must survive)")

    @classmethod
    def of(cls, cfg: Any, he_context: bytes | None = None) -> SecureSettings | None:
        """The settings of a study config (None: the study does not use secure aggregation)."""
        sa = cfg.secure_aggregation
        if sa.protocol == "none":
            return None
        return cls(sa.protocol, threshold=sa.threshold, frac_bits=sa.frac_bits,
                   he_context=he_context, min_completed=cfg.strategy.min_completed)

    @property
    def is_masking(self) -> bool:
        return self.protocol in ("secagg", "secagg+")

    def survivors_needed(self, n: int) -> int:
        """``t`` for a round of ``n`` participants (the same at the hub and every site)."""
        from fedcare.privacy.secagg.config import survivor_threshold

        return survivor_threshold(n, self.threshold, self.min_completed)

    def meta(self, participants: Sequence[str], attempt: int = 1) -> dict[str, Any]:
        return {"secure": self.protocol, "participants": list(participants),
                ATTEMPT: attempt}


def contribution(trained: Parameters, global_: Parameters, weight: float) -> np.ndarray:
    """``[w·(x − g), w]`` as one float64 vector (what a site feeds the secure sum)."""
    x = trained.flatten("float64")
    g = global_.flatten("float64")
    out = np.empty(x.size + 1, dtype=np.float64)
    np.subtract(x, g, out=out[:-1])
    out[:-1] *= weight
    out[-1] = weight
    return out


def delta_contribution(delta: Parameters) -> np.ndarray:
    """``[Δ, 1]``: a DP-FedAvg site's clipped difference, weighted 1 like every other site."""
    flat = delta.flatten("float64")
    return np.concatenate([flat, [1.0]])


def mean_from_sum(total: np.ndarray, global_: Parameters) -> tuple[np.ndarray, float]:
    """FedAvg's new model (flat float64) and the total weight, from the summed contributions."""
    weight = float(total[-1])
    if not weight > 0:
        raise ProtocolError("the secure sum carries no examples (total weight <= 0)")
    return global_.flatten("float64") + total[:-1] / weight, weight


def secagg_config(settings: SecureSettings, participants: Sequence[str], vector_length: int,
                  study: str, round_: int) -> Any:
    """The round's public secure-aggregation parameters, derived identically at the hub and at
    every site from the study, the round and the participant list (nothing else is trusted).

    ``clip`` is the largest magnitude the fixed-point sum of n sites can hold at
    ``frac_bits`` in ``mod_bits``-bit integers (the protocol refuses a value beyond it rather
    than wrapping)."""
    from fedcare.privacy.secagg import GraphKind, SecAggConfig

    n = len(participants)
    t = settings.survivors_needed(n)
    clip = float(2 ** (settings.mod_bits - 1 - settings.frac_bits) // n - 1)
    seed = hashlib.sha256(f"fedcare-secagg-graph|{study}|{round_}".encode()).digest()
    graph = GraphKind.SECAGG_PLUS if settings.protocol == "secagg+" else GraphKind.COMPLETE
    return SecAggConfig(sites=tuple(participants), threshold=t,
                        vector_length=vector_length, clip=clip, frac_bits=settings.frac_bits,
                        mod_bits=settings.mod_bits, round_id=round_, graph=graph,
                        graph_seed=seed)


def _as_aux(arrays: Mapping[str, np.ndarray]) -> dict[str, Parameters]:
    return {PROTOCOL_AUX: Parameters({k: np.asarray(v) for k, v in arrays.items()},
                                     allow_integer=True)}


def _arrays(update_or_task: Update | Task) -> dict[str, np.ndarray]:
    got = update_or_task.aux.get(PROTOCOL_AUX)
    if got is None:
        raise ProtocolError("message carries no secure-aggregation payload")
    return dict(got.items())


def _min_sum(settings: SecureSettings, n: int) -> int:
    """Fewest sites a decrypted CKKS sum may hold: the survivor threshold, and never one."""
    return settings.survivors_needed(n) if n >= 2 else 2


# -- the site half -----------------------------------------------------------------------------
def task_attempt(task: Task) -> int:
    """The protocol attempt a secure task belongs to (1 when the hub names none)."""
    got = task.meta.get(ATTEMPT, 1)
    if isinstance(got, bool) or not isinstance(got, int) or got < 1:
        raise ProtocolError(f"secure task names an invalid protocol attempt {got!r}")
    return got


@dataclass
class _Session:
    """One attempt at a round's protocol: its public parameters (or CKKS context) and the
    protocol client holding this attempt's fresh secrets."""

    attempt: int
    first: Any  # SecAggConfig, or the secret HEContext
    client: Any  # SecAggClient (None for CKKS)


class SecureSite:
    """A site's secure-aggregation state for one study, held in memory between the steps.

    A site enters ONE vector per round into the protocol. A hub restarted mid-round has lost
    its protocol state and runs the round's protocol again from its fit step as a new attempt
    (``meta["attempt"]``): the site then re-enters the same vector with fresh keys (a new
    session; the old attempt's steps are refused from then on). That is safe because the hub
    can learn at most one sum per round: a site that has revealed its unmask shares (or
    decrypted a CKKS sum) for a set of sites refuses to reveal the round's sum over any other
    set, and a later attempt over another set would need a strict majority of those sites
    (:func:`fedcare.privacy.secagg.config.survivor_threshold`). Older rounds and older
    attempts are refused for good. A site restarted mid-round has lost its session and
    answers the next step with an error: the protocol treats it as a dropout."""

    def __init__(self, site: str, settings: SecureSettings, known_sites: Sequence[str] | None
                 = None, *, identity: SiteIdentity | None = None,
                 keys: StudyKeys | None = None) -> None:
        self.site = site
        self.settings = settings
        self.known_sites = set(known_sites) if known_sites is not None else None
        self.identity, self.keys = _ckks_custody(site, settings, identity, keys)
        self._round = -1  # the newest round this site entered (-1: none yet; 0 is the stats)
        self._attempt = 0  # the newest attempt at it
        self._vector: np.ndarray | None = None  # the round's one input
        self._answer: dict[str, Parameters] | None = None  # the newest attempt's fit answer
        self._session: _Session | None = None  # open until the attempt's last step
        self._revealed: frozenset[str] | None = None  # the set the round's sum was opened for

    def _participants(self, task: Task) -> list[str]:
        got = task.meta.get("participants")
        if (not isinstance(got, list) or not all(isinstance(s, str) for s in got)
                or self.site not in got or len(set(got)) != len(got)):
            raise ProtocolError("secure task lacks a valid participant list naming this site")
        if self.known_sites is not None and not set(got) <= self.known_sites:
            raise ProtocolError(f"secure task names sites outside the study: "
                                f"{sorted(set(got) - self.known_sites)}")
        if task.meta.get("secure") != self.settings.protocol:
            raise ProtocolError(f"the hub asked for {task.meta.get('secure')!r} but the "
                                f"approved study uses {self.settings.protocol!r}")
        return got

    def check(self, task: Task) -> None:
        """Validate a secure fit task before the site touches its data (an older round or an
        older attempt is refused here, before any training or privacy charge)."""
        self._participants(task)
        attempt = task_attempt(task)
        if task.round < self._round:
            raise ProtocolError(f"round {task.round} was already answered; a site never "
                                "masks or encrypts a round's update twice")
        if task.round == self._round and attempt < self._attempt:
            raise ProtocolError(f"round {task.round}'s protocol already runs as attempt "
                                f"{self._attempt}; attempt {attempt} is stale")

    def entered(self, round_: int) -> np.ndarray | None:
        """The vector this site entered into round ``round_`` (None: it has not)."""
        return self._vector if round_ == self._round else None

    def start(self, task: Task, vector: np.ndarray) -> dict[str, Parameters]:
        """After local training (or, for a later attempt, with the round's stored vector):
        open the attempt's session; the fit reply's protocol payload.

        The same attempt asked again (a re-delivered task) gets the SAME answer; a later
        attempt gets a fresh session (fresh keys, a fresh encryption) of the same vector."""
        participants = self._participants(task)
        self.check(task)
        attempt = task_attempt(task)
        if task.round == self._round:
            if attempt == self._attempt and self._answer is not None:
                return self._answer
            if self._vector is None or not np.array_equal(vector, self._vector):
                raise ProtocolError(f"round {task.round}: a site enters one update per round "
                                    "into secure aggregation, never a second one")
        else:  # a new round: everything about the previous one is dropped
            self._round, self._vector, self._revealed = task.round, vector, None
        self._attempt, self._answer, self._session = attempt, None, None
        if self.settings.is_masking:
            from fedcare.privacy.secagg import SecAggClient

            cfg = secagg_config(self.settings, participants, vector.size, task.study,
                                task.round)
            client = SecAggClient(cfg, self.site)
            self._session = _Session(attempt, cfg, client)
            self._answer = _as_aux(client.advertise_keys().to_arrays(cfg))
            return self._answer
        ctx, answer = self._ckks_contribution(task, vector)
        self._session = _Session(attempt, ctx, None)
        self._answer = _as_aux(answer)
        return self._answer

    def _reveal(self, round_: int, sites: Sequence[str]) -> None:
        """Allow opening round ``round_``'s sum over ``sites`` only if no other set was."""
        wanted = frozenset(sites)
        if self._revealed is not None and wanted != self._revealed:
            raise ProtocolError(f"refusing to reveal round {round_}'s sum over "
                                f"{sorted(wanted)}: this site already helped reveal it over "
                                f"{sorted(self._revealed)}, and two sums over different sets "
                                "would expose the difference")

    def _ckks_contribution(self, task: Task, vector: np.ndarray) -> tuple[Any, dict[str, Any]]:
        """The site's CKKS answer to a fit: its ciphertext, signed (ECDSA with its site key
        over the ciphertext's sha256, the study, the round and its name) with its certificate,
        so a decrypting site can check that every ciphertext in a sum is what its site sent
        for this round (:mod:`fedcare.engine.ckks_custody`)."""
        from fedcare.engine.ckks_custody import contribution_message
        from fedcare.privacy.he import encrypt_vector

        if self.identity is None or self.keys is None:
            raise ConfigError("this site has no CKKS key source and identity (a node gets them "
                              "from its startup kit)")
        ctx = self.keys.context(task.study)
        blob = encrypt_vector(ctx, vector)
        signature = self.identity.sign(contribution_message(task.study, task.round, self.site,
                                                            blob))
        return ctx, {"ct": np.frombuffer(blob, dtype=np.uint8),
                     "sig": np.frombuffer(signature, dtype=np.uint8),
                     "cert": np.frombuffer(self.identity.cert_der(), dtype=np.uint8)}

    def step(self, task: Task) -> dict[str, Parameters]:
        """One later protocol step of the round's current attempt."""
        session = self._session
        attempt = task_attempt(task)
        if task.round != self._round or session is None or attempt != self._attempt:
            raise ProtocolError(f"no secure-aggregation session for round {task.round} attempt "
                                f"{attempt} (was this site restarted mid-round, or has the "
                                "round's protocol been restarted since?)")
        participants = self._participants(task)
        arrays = _arrays(task)
        if (task.kind is TaskKind.HE_DECRYPT) == self.settings.is_masking:
            raise ProtocolError(f"a {task.kind.value} step does not belong to this study's "
                                f"{self.settings.protocol} protocol")
        assert self._vector is not None
        if task.kind is TaskKind.HE_DECRYPT:
            included = task.meta.get("included")
            self._reveal(task.round, included if isinstance(included, list) else [])
            total = self._ckks_decrypt(task, participants, arrays, session.first,
                                       self._vector.size)
            self._revealed, self._session = frozenset(included or ()), None
            return _as_aux({"sum": total})
        from fedcare.privacy.secagg import (
            KeysBroadcast,
            ShareDelivery,
            UnmaskRequest,
        )

        cfg, client = session.first, session.client
        if task.kind is TaskKind.SECAGG_SHARE:
            bundle = client.share_keys(KeysBroadcast.from_arrays(arrays, cfg=cfg))
            return _as_aux(bundle.to_arrays(cfg))
        if task.kind is TaskKind.SECAGG_MASK:
            masked = client.masked_input(self._vector, ShareDelivery.from_arrays(arrays,
                                                                                 cfg=cfg))
            return _as_aux(masked.to_arrays(cfg))
        if task.kind is TaskKind.SECAGG_UNMASK:
            request = UnmaskRequest.from_arrays(arrays, cfg=cfg)
            self._reveal(task.round, request.survivors)
            response = client.unmask(request)
            self._revealed, self._session = frozenset(request.survivors), None
            return _as_aux(response.to_arrays(cfg))
        raise ProtocolError(f"unexpected protocol step {task.kind.value}")

    def _ckks_decrypt(self, task: Task, participants: list[str],
                      arrays: Mapping[str, np.ndarray], ctx: Any, length: int) -> np.ndarray:
        """Decrypt the sum of the round's signed contributions, and nothing else.

        The task carries each included site's ciphertext, signature and certificate (never a
        ready-made "sum", which a site cannot tell from one site's ciphertext). Every
        certificate must chain to the federation CA and name its site, every signature must
        cover that ciphertext for this study and round, the included sites must be distinct
        participants and at least the round's threshold; then this site adds the ciphertexts
        itself and decrypts that sum. What this can and cannot prove is in
        :mod:`fedcare.engine.ckks_custody`.
        """
        from fedcare.engine.ckks_custody import verify_contributions
        from fedcare.privacy.he import decrypt_vector, peek, sum_ciphertexts

        assert self.identity is not None  # a CKKS session exists only with an identity
        included = task.meta.get("included")
        need = _min_sum(self.settings, len(participants))
        if (not isinstance(included, list) or not all(isinstance(s, str) for s in included)
                or not set(included) <= set(participants) or len(set(included)) < need
                or len(set(included)) != len(included)):
            raise ProtocolError(f"refusing to decrypt: the sum must include at least "
                                f"{need} distinct sites of the round")
        blobs = verify_contributions(self.identity, task.study, task.round, included, arrays)
        for site, blob in blobs.items():
            if peek(blob).length != length:
                raise ProtocolError(f"refusing to decrypt: site {site}'s ciphertext is not "
                                    "one of this round's vectors")
        try:
            total = decrypt_vector(ctx, sum_ciphertexts(ctx, blobs))
        except FedcareError as exc:
            raise ProtocolError(f"refusing to decrypt: {exc.message}") from exc
        return total.astype(np.float64)


# -- the hub half ------------------------------------------------------------------------------
@dataclass
class SecureSum:
    """What the hub learns from a secure round: the sum's mean, and who is in it."""

    new_model: np.ndarray  # flat float64: g + Σ w·(x − g) / Σ w
    total_weight: float
    included: list[str]
    failures: dict[str, str]
    bytes_down: int = 0
    bytes_up: int = 0
    #: The decoded sum Σ w·(x − g) itself (central DP noise is added to it exactly).
    total: np.ndarray | None = None


class StepReplies(Protocol):
    """What one protocol step's exchange returns (the engine's ``Exchange``)."""

    @property
    def updates(self) -> Mapping[str, Update]: ...
    @property
    def failures(self) -> Mapping[str, str]: ...
    @property
    def bytes_down(self) -> int: ...
    @property
    def bytes_up(self) -> int: ...


#: Sends one protocol step: ``(round, kind, per-site aux, meta) -> replies``. The engine
#: passes its protocol exchange; the aggregator never sees the engine itself.
ExchangeFn = Callable[[int, TaskKind, Mapping[str, Mapping[str, Parameters]],
                       Mapping[str, Any]], StepReplies]


class SecureAggregator:
    """Drives a round's protocol steps through an exchange function (the engine's).

    ``attempts(round)`` says which attempt at the round's protocol to run: 1 in a simulation;
    a hub restarted mid-round asks its store (one more than the attempts its earlier processes
    started), so the new attempt's tasks are new ones and the sites use fresh keys."""

    def __init__(self, settings: SecureSettings, public_he_context: bytes | None = None,
                 attempts: Callable[[int], int] | None = None) -> None:
        self.settings = settings
        self.public_he_context = public_he_context
        self._attempts = attempts
        self._attempt: dict[int, int] = {}

    def attempt(self, round_: int) -> int:
        """The attempt at round ``round_``'s protocol this process runs (asked once)."""
        if round_ not in self._attempt:
            self._attempt[round_] = self._attempts(round_) if self._attempts else 1
        return self._attempt[round_]

    def meta(self, round_: int, participants: Sequence[str]) -> dict[str, Any]:
        return self.settings.meta(participants, self.attempt(round_))

    def aggregate(self, exchange: ExchangeFn, round_: int, participants: Sequence[str],
                  fit: Mapping[str, Update], *, study: str,
                  global_model: Parameters) -> SecureSum:
        """Run the round's protocol steps after its fit replies (``fit``: each site's first
        protocol message) through ``exchange``; ``global_model`` is what the sites trained
        from (its layout fixes the vectors' length) and ``study`` names the session."""
        acc = SecureSum(np.empty(0), 0.0, [], {})
        run = _Run(self, exchange, round_, participants, study, global_model, acc)
        try:
            if self.settings.is_masking:
                return run.secagg(fit)
            return run.ckks(fit)
        except FedcareError as exc:
            if not acc.failures:
                raise
            # Say why sites were missing (e.g. a site refusing to unmask), not only how many.
            raise ProtocolError(f"{exc.message}; the sites' failures: {acc.failures}",
                                site=exc.site) from exc

    def _ckks_parse(self, parts: dict[str, dict[str, np.ndarray]],
                    acc: SecureSum) -> dict[str, dict[str, np.ndarray]]:
        from fedcare.privacy.he import HEContext, sum_ciphertexts

        assert self.public_he_context is not None
        public = HEContext.load_public(self.public_he_context)
        while parts:
            try:
                sum_ciphertexts(public, {s: p["ct"].tobytes() for s, p in parts.items()})
                break
            except FedcareError as exc:  # a bad ciphertext (wrong context, truncated...)
                bad = exc.site if exc.site in parts else None
                if bad is None:
                    raise
                acc.failures[bad] = f"ciphertext: {exc.message}"
                del parts[bad]  # that site is left out; the others are checked again
        return parts


@dataclass
class _Run:
    """One run of a round's protocol: the aggregator, how to send a step, and the round."""

    agg: SecureAggregator
    exchange: ExchangeFn
    round: int
    participants: Sequence[str]
    study: str
    global_model: Parameters
    acc: SecureSum

    def _step(self, kind: TaskKind, payloads: Mapping[str, Mapping[str, np.ndarray]],
              **meta: Any) -> dict[str, dict[str, np.ndarray]]:
        ex = self.exchange(self.round, kind, {s: _as_aux(p) for s, p in payloads.items()},
                           {**self.agg.meta(self.round, self.participants), **meta})
        self.acc.failures.update({s: f"{kind.value}: {m}" for s, m in ex.failures.items()})
        self.acc.bytes_down += ex.bytes_down
        self.acc.bytes_up += ex.bytes_up
        return {s: _arrays(u) for s, u in ex.updates.items()}

    def secagg(self, fit: Mapping[str, Update]) -> SecureSum:
        from fedcare.privacy.secagg import (
            AdvertiseKeys,
            MaskedInput,
            SecAggServer,
            ShareBundle,
            UnmaskResponse,
        )

        acc = self.acc
        cfg = secagg_config(self.agg.settings, self.participants,
                            self.global_model.spec.total_size + 1, self.study, self.round)
        server = SecAggServer(cfg)
        keys = {}
        for s, u in fit.items():
            try:
                keys[s] = AdvertiseKeys.from_arrays(_arrays(u), cfg=cfg)
            except FedcareError as exc:
                acc.failures[s] = f"keys: {exc.message}"
        bcast = server.collect_keys(keys)
        got = self._step(TaskKind.SECAGG_SHARE, {s: m.to_arrays(cfg) for s, m in bcast.items()})
        routed = server.collect_shares(_parse(got, ShareBundle, cfg, acc))
        got = self._step(TaskKind.SECAGG_MASK, {s: m.to_arrays(cfg) for s, m in routed.items()})
        request = server.collect_masked(_parse(got, MaskedInput, cfg, acc))
        got = self._step(TaskKind.SECAGG_UNMASK,
                         {s: request.to_arrays(cfg) for s in request.survivors})
        result = server.finish(_parse(got, UnmaskResponse, cfg, acc))
        acc.new_model, acc.total_weight = mean_from_sum(result.sum, self.global_model)
        acc.total = result.sum[:-1]
        acc.included = sorted(result.included)
        return acc

    def ckks(self, fit: Mapping[str, Update]) -> SecureSum:
        """Collect the sites' signed ciphertexts and have one included site decrypt their sum.

        The hub needs no CKKS context: it checks each ciphertext's header (same key
        fingerprint, the model's length) and forwards the signed ciphertexts; the decrypting
        site adds them. Given the public context (a simulation), it also parses every
        ciphertext, so a corrupt one is left out before a site is asked to decrypt."""
        acc, length = self.acc, self.global_model.spec.total_size + 1
        parts = _ckks_parts(fit, length, acc)
        if self.agg.public_he_context is not None and parts:
            parts = self.agg._ckks_parse(parts, acc)
        included = sorted(parts)
        need = _min_sum(self.agg.settings, len(self.participants))
        if len(included) < need:
            # A "sum" of fewer would let a decrypting site hand the hub one site's update.
            raise ProtocolError(f"round {self.round}: only {len(included)} ciphertexts; the "
                                f"sum must include at least {need} sites")
        payload = {f"{k}.{s}": v for s in included for k, v in parts[s].items()}
        # One participant decrypts the sum (any will do; the first that answers is used).
        for decryptor in included:
            got = self._step(TaskKind.HE_DECRYPT, {decryptor: payload}, included=included)
            if decryptor in got:
                plain = np.asarray(got[decryptor]["sum"], dtype=np.float64)
                if plain.shape != (length,) or not np.isfinite(plain).all():
                    acc.failures[decryptor] = "decrypted sum has the wrong shape or NaN/Inf"
                    continue
                acc.new_model, acc.total_weight = mean_from_sum(plain, self.global_model)
                acc.total = plain[:-1]
                acc.included = included
                return acc
        raise ProtocolError(f"round {self.round}: no site could decrypt the aggregate: "
                            f"{acc.failures}")


def _parse(got: Mapping[str, Mapping[str, np.ndarray]], cls: Any, cfg: Any,
           acc: SecureSum) -> dict[str, Any]:
    out = {}
    for s, arrays in got.items():
        try:
            out[s] = cls.from_arrays(arrays, cfg=cfg)
        except FedcareError as exc:  # a malformed message: that site drops out
            acc.failures[s] = exc.message
    return out


def _ckks_parts(fit: Mapping[str, Update], length: int,
                acc: SecureSum) -> dict[str, dict[str, np.ndarray]]:
    """Each site's ciphertext, signature and certificate, for the sites whose ciphertext
    header is well formed, holds ``length`` values and carries the key fingerprint most
    sites used (a site under another key is left out, not summed into garbage)."""
    from fedcare.privacy.he import peek

    parts: dict[str, dict[str, np.ndarray]] = {}
    prints: dict[str, str] = {}
    for s, u in sorted(fit.items()):
        try:
            arrays = _arrays(u)
            got = {k: np.asarray(arrays[k], dtype=np.uint8) for k in ("ct", "sig", "cert")}
            header = peek(got["ct"].tobytes())
        except (FedcareError, KeyError) as exc:
            acc.failures[s] = f"ciphertext: {exc}"
            continue
        if header.length != length:
            acc.failures[s] = (f"ciphertext: holds {header.length} values, the round's "
                               f"vectors {length}")
            continue
        parts[s], prints[s] = got, header.fingerprint
    if prints:
        counts: dict[str, int] = {}
        for fp in prints.values():
            counts[fp] = counts.get(fp, 0) + 1
        common = max(sorted(counts), key=lambda fp: counts[fp])
        for s, fp in prints.items():
            if fp != common:
                acc.failures[s] = ("ciphertext: made under another HE context than the "
                                   "round's other sites")
                del parts[s]
    return parts


def _ckks_custody(site: str, settings: SecureSettings, identity: SiteIdentity | None,
                  keys: StudyKeys | None) -> tuple[SiteIdentity | None, StudyKeys | None]:
    """A CKKS site's identity and key source: given (a node: its kit and the other sites),
    or, for a simulation that hands every site one secret context, an identity from a
    process-wide throwaway CA so the same signed-contribution checks run."""
    if settings.protocol != "ckks" or settings.he_context is None:
        return identity, keys
    from fedcare.engine.ckks_custody import FixedKeys

    return (identity or _local_trust().identity(site),
            keys or FixedKeys(settings.he_context))


_LOCAL_TRUST: list[LocalTrust] = []


def _local_trust() -> LocalTrust:
    from fedcare.engine.ckks_custody import LocalTrust

    if not _LOCAL_TRUST:
        _LOCAL_TRUST.append(LocalTrust())
    return _LOCAL_TRUST[0]


# -- a secure sum of one vector per site (the feature statistics) ------------------------------
def sites_in_any_sum(settings: SecureSettings, n: int) -> int:
    """The fewest sites' vectors any sum the hub can obtain from a session of ``n``
    participants holds: the survivor threshold (secagg's server cannot unmask fewer
    survivors, and a CKKS decryptor requires as many sites in a sum). A site that adds
    distributed DP noise relies on this many shares being in whatever the hub learns."""
    return min(_min_sum(settings, n), n)


def vector_contribution(vector: np.ndarray) -> np.ndarray:
    """``[v, 1]``: a site's vector for :class:`SecureVectorSum` (weight 1 per site, so the
    protocol's weighted-mean bookkeeping holds whatever ``v`` is, e.g. a noised count)."""
    return np.concatenate([np.asarray(vector, dtype=np.float64).reshape(-1), [1.0]])


@dataclass
class VectorSum:
    """The plain sum of the included sites' vectors: all the hub learns from the session."""

    total: np.ndarray
    included: list[str]
    failures: dict[str, str]
    bytes_down: int = 0
    bytes_up: int = 0


class SecureVectorSum:
    """Runs one secure-aggregation session over an arbitrary vector per site (not a model
    update): used for the feature statistics, whose ``[count, sums, sums of squares]`` the hub
    must only learn as the federation's total.

    Each site answers the task that asked for its vector with the protocol's first message
    for :func:`vector_contribution` (secagg keys, or a CKKS ciphertext), exactly as a secure
    fit reply; the later steps are the very protocol steps of a training round
    (:meth:`SecureAggregator.aggregate`, with a flat zero "global model" of the vector's
    length, so the protocol's ``g + Σ w·v / Σ w`` is the plain mean of the vectors). The
    session's round number must differ from every training round's (the engine uses round
    0): sessions, graph seeds and task ids are per round."""

    def __init__(self, aggregator: SecureAggregator) -> None:
        self.agg = aggregator

    def run(self, exchange: ExchangeFn, round_: int, participants: Sequence[str],
            first: Mapping[str, Update], length: int, *, study: str) -> VectorSum:
        zero = Parameters({"v": np.zeros(length, dtype=np.float64)})
        got = self.agg.aggregate(exchange, round_, participants, first, study=study,
                                 global_model=zero)
        if round(got.total_weight) != len(got.included):  # each site weighs exactly 1
            raise ProtocolError(f"the secure sum's weight {got.total_weight:g} is not its "
                                f"{len(got.included)} sites")
        return VectorSum(got.new_model * got.total_weight, list(got.included),
                         dict(got.failures), got.bytes_down, got.bytes_up)
