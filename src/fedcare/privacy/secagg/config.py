"""One round's secure-aggregation parameters, the neighbour graph and the fixed-point rule.

Everything here is public: every site and the hub build the same :class:`SecAggConfig` from
the round's task, so the graph, thresholds and encoding are never negotiated in the protocol.

Graphs
------
* ``COMPLETE`` — Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
  Learning", CCS 2017: every site masks against, and secret-shares with, every other site.
  Reconstructing a site's secrets needs ``threshold`` shares.
* ``SECAGG_PLUS`` — Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic
  Overhead", CCS 2020: each site only talks to its ``k`` neighbours in a public random graph.
  We use the Harary graph H(k, n) (a ring where each site is joined to the k/2 nearest on each
  side; it is k-vertex-connected) on a random relabelling of the sites drawn from the public
  ``graph_seed`` — the construction Google's production SecAgg+ uses. Each site's secrets are
  shared among its neighbourhood (itself plus its k neighbours) with a *neighbourhood*
  threshold ``t_k``.

Choosing k and t_k (SecAgg+)
----------------------------
Model: each site independently drops out with probability ``dropout_fraction`` (δ) and is
corrupt (colludes with the hub) with probability ``corrupt_fraction`` (γ). We pick the smallest
even k (and the smallest t_k > (k+1)/2 for it) such that, by union bounds over the n sites,

* correctness: P[some neighbourhood has fewer than t_k survivors] <= n·P[Bin(k+1, 1-δ) < t_k]
  <= 2^-correctness_bits;
* secrecy of each site's keys: n·P[Bin(k+1, γ) >= t_k] <= 2^-security_bits (fewer than t_k
  corrupt holders can never rebuild a mask key or self-mask seed);
* no partial sums: the hub learns the sum of each connected component of the graph of honest
  survivors, so that graph must stay connected. On the relabelled ring this needs two runs of
  k/2 consecutive dropped-or-corrupt sites; P <= n²/2·(δ+γ)^k <= 2^-security_bits.

These are Bell et al.'s three conditions evaluated exactly for a given n instead of their
asymptotic O(log n) constants. When no even k < n-1 satisfies them the graph is complete (for
the 5-50 site federations fedcare targets that is the usual outcome; SecAgg+ pays off for
hundreds of sites). ``degree`` overrides the search (then t_k = max(⌊(k+1)/2⌋+1,
⌈(k+1)·t/n⌉)): an expert setting that carries no guarantee, used by tests and benchmarks.

Fixed point and headroom
------------------------
A value x with |x| <= clip is encoded as round(x·2^f) mod 2^k (two's complement in k bits).
The decoded sum of n sites is exact as long as n·M <= 2^(k-1) - 1 where M = ⌊clip·2^f + ½⌋ is
the largest encoded magnitude: the config refuses anything else. The decoded sum differs from
the true float sum by at most n·2^-(f+1) per element (round-half-even error per site); inputs
that are multiples of 2^-f (e.g. integers) are summed exactly.
"""

from __future__ import annotations

import enum
import hashlib
import math
import struct
from dataclasses import dataclass, field

import numpy as np

from fedcare.core.errors import ConfigError

MAX_ROUND_ID = 2**63 - 1
_DIGEST_VERSION = b"fedcare-secagg/v1"


class GraphKind(enum.StrEnum):
    """Who masks against whom: everyone (Bonawitz 2017) or a sparse random graph (Bell 2020)."""

    COMPLETE = "complete"
    SECAGG_PLUS = "secagg+"


@dataclass(frozen=True)
class SecAggConfig:
    """Public parameters of one secure-aggregation round (identical at the hub and every site).

    ``threshold`` (t) is the minimum number of sites that must survive every stage; it must be a
    strict majority (2t > n, t >= 2) so two disjoint groups of survivors can never both complete
    a round and the hub cannot learn a site's input by splitting the federation.
    """

    sites: tuple[str, ...]
    threshold: int
    vector_length: int
    clip: float = 1.0
    frac_bits: int = 16
    mod_bits: int = 32
    round_id: int = 0
    graph: GraphKind = GraphKind.COMPLETE
    graph_seed: bytes = b""
    dropout_fraction: float = 0.1
    corrupt_fraction: float = 0.05
    security_bits: int = 40
    correctness_bits: int = 20
    degree: int | None = None
    # Derived (computed in __post_init__).
    digest: bytes = field(init=False, repr=False, compare=False)
    share_threshold: int = field(init=False, compare=False)
    _neighbours: dict[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sites", tuple(self.sites))
        try:
            object.__setattr__(self, "graph", GraphKind(self.graph))
        except ValueError:
            raise ConfigError(f"graph must be one of {[g.value for g in GraphKind]}, "
                              f"got {self.graph!r}", source="secagg") from None
        problems = self._problems()
        if problems:
            raise ConfigError(problems, source="secagg")
        object.__setattr__(self, "_index", {s: i for i, s in enumerate(self.sites)})
        degree, t_k = self._degree_and_threshold()
        object.__setattr__(self, "share_threshold", t_k)
        object.__setattr__(self, "_neighbours", self._build_graph(degree))
        object.__setattr__(self, "digest", self._digest())

    # ----------------------------------------------------------------- validation
    def _problems(self) -> list[str]:
        p: list[str] = []
        n = len(self.sites)
        if any(not isinstance(s, str) or not s for s in self.sites):
            p.append("every site id must be a non-empty string")
        if len(set(self.sites)) != n:
            p.append("site ids must be unique")
        if n < 2:
            p.append(f"secure aggregation needs at least 2 sites, got {n}")
        if not isinstance(self.threshold, int) or not (2 <= self.threshold <= n
                                                         and 2 * self.threshold > n):
            p.append(f"threshold must be an integer with 2 <= t <= n and 2t > n (n={n}), "
                     f"got {self.threshold!r}")
        if not isinstance(self.vector_length, int) or self.vector_length < 0:
            p.append(f"vector_length must be an integer >= 0, got {self.vector_length!r}")
        if self.mod_bits not in (32, 64):
            p.append(f"mod_bits must be 32 or 64, got {self.mod_bits!r}")
        if not isinstance(self.frac_bits, int) or not 0 <= self.frac_bits <= 62:
            p.append(f"frac_bits must be an integer in [0, 62], got {self.frac_bits!r}")
        if not (isinstance(self.clip, (int, float)) and math.isfinite(self.clip)
                and self.clip > 0):
            p.append(f"clip must be a finite number > 0, got {self.clip!r}")
        if not isinstance(self.round_id, int) or not 0 <= self.round_id <= MAX_ROUND_ID:
            p.append(f"round_id must be an integer in [0, 2^63), got {self.round_id!r}")
        if not isinstance(self.graph_seed, bytes):
            p.append("graph_seed must be bytes (public randomness chosen by the hub)")
        for name in ("dropout_fraction", "corrupt_fraction"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 <= v < 1):
                p.append(f"{name} must be in [0, 1), got {v!r}")
        for name in ("security_bits", "correctness_bits"):
            if not isinstance(getattr(self, name), int) or not 1 <= getattr(self, name) <= 128:
                p.append(f"{name} must be an integer in [1, 128]")
        if self.degree is not None and (
                not isinstance(self.degree, int) or not 2 <= self.degree <= n - 1
                or (self.degree % 2 and self.degree != n - 1)):
            p.append(f"degree must be an even integer in [2, n-1] or n-1 (n={n}), "
                     f"got {self.degree!r}")
        if not p:
            p.extend(self._headroom_problems())
        return p

    def _headroom_problems(self) -> list[str]:
        n = len(self.sites)
        limit = 2 ** (self.mod_bits - 1) - 1
        if n * self.max_encoded > limit:
            return [f"{n} sites x clip {self.clip} x 2^{self.frac_bits} overflow "
                    f"{self.mod_bits}-bit sums (need n * round(clip*2^f) <= 2^{self.mod_bits - 1}"
                    f" - 1): lower frac_bits or clip, or use mod_bits=64"]
        return []

    # ----------------------------------------------------------------- derived values
    @property
    def n(self) -> int:
        return len(self.sites)

    @property
    def dtype(self) -> np.dtype:
        """Little-endian unsigned integers of ``mod_bits`` bits: numpy wraps mod 2^k for free."""
        return np.dtype("<u4") if self.mod_bits == 32 else np.dtype("<u8")

    @property
    def max_encoded(self) -> int:
        """Largest magnitude an encoded element can have: ⌊clip·2^f + ½⌋."""
        return math.floor(self.clip * 2.0**self.frac_bits + 0.5)

    @property
    def quantisation_bound(self) -> float:
        """Max |decoded sum - true sum| per element for n sites: n·2^-(f+1)."""
        return self.n * 2.0 ** -(self.frac_bits + 1)

    def index(self, site: str) -> int:
        """Position of ``site`` in the round (orders mask signs; 0-based)."""
        return self._index[site]

    def has_site(self, site: object) -> bool:
        return isinstance(site, str) and site in self._index

    def neighbours(self, site: str) -> tuple[str, ...]:
        """Sites ``site`` masks against (excluding itself), in round order."""
        return self._neighbours[site]

    def share_holders(self, site: str) -> tuple[str, ...]:
        """Sites holding a share of ``site``'s secrets: itself and its neighbours, in round order.

        The Shamir x-coordinate of holder h is its position in this tuple plus one.
        """
        return tuple(sorted((site, *self._neighbours[site]), key=self._index.__getitem__))

    @property
    def is_complete(self) -> bool:
        return all(len(v) == self.n - 1 for v in self._neighbours.values())

    # ----------------------------------------------------------------- graph
    def _degree_and_threshold(self) -> tuple[int, int]:
        n, t = self.n, self.threshold
        if self.graph is GraphKind.COMPLETE:
            return n - 1, t
        if self.degree is not None:
            k = self.degree
            if k == n - 1:
                return k, t
            return k, max((k + 1) // 2 + 1, math.ceil((k + 1) * t / n))
        found = find_degree(n, self.dropout_fraction, self.corrupt_fraction,
                            self.security_bits, self.correctness_bits)
        return found if found is not None else (n - 1, t)

    def _build_graph(self, k: int) -> dict[str, tuple[str, ...]]:
        n = self.n
        if k >= n - 1:
            return {s: tuple(x for x in self.sites if x != s) for s in self.sites}
        seed = hashlib.sha256(b"fedcare-secagg/graph" + self.graph_seed
                              + struct.pack("<q", self.round_id)).digest()
        perm = np.random.default_rng(np.frombuffer(seed, np.uint32)).permutation(n)
        ring = [self.sites[i] for i in perm]
        nb: dict[str, set[str]] = {s: set() for s in self.sites}
        for pos, s in enumerate(ring):
            for d in range(1, k // 2 + 1):
                other = ring[(pos + d) % n]
                nb[s].add(other)
                nb[other].add(s)
        return {s: tuple(sorted(v, key=self._index.__getitem__)) for s, v in nb.items()}

    def _digest(self) -> bytes:
        """SHA-256 of everything public about the round; bound into every key and ciphertext."""
        h = hashlib.sha256(_DIGEST_VERSION)
        h.update(struct.pack("<qqqqd", self.round_id, self.threshold, self.vector_length,
                             self.mod_bits * 1000 + self.frac_bits, float(self.clip)))
        for s in self.sites:
            b = s.encode()
            h.update(struct.pack("<I", len(b)) + b)
        for s in self.sites:
            h.update(struct.pack("<I", len(self._neighbours[s])))
            h.update(b"".join(struct.pack("<I", self._index[v]) for v in self._neighbours[s]))
        h.update(struct.pack("<I", self.share_threshold))
        h.update(struct.pack("<I", len(self.graph_seed)) + self.graph_seed)  # e.g. study-bound
        return h.digest()


def _binom_tail_ge(m: int, p: float, a: int) -> float:
    """P[Bin(m, p) >= a]."""
    return sum(math.comb(m, i) * p**i * (1 - p) ** (m - i) for i in range(max(a, 0), m + 1))


def _binom_tail_lt(m: int, p: float, a: int) -> float:
    """P[Bin(m, p) < a], summed directly (1 - tail would cancel to 0 for tiny values)."""
    return sum(math.comb(m, i) * p**i * (1 - p) ** (m - i) for i in range(min(a, m + 1)))


def find_degree(n: int, dropout: float, corrupt: float, security_bits: int,
                correctness_bits: int) -> tuple[int, int] | None:
    """Smallest even k < n-1 and its neighbourhood threshold meeting the module's three bounds.

    Returns None when only the complete graph qualifies.
    """
    sec, cor = 2.0**-security_bits, 2.0**-correctness_bits
    for k in range(2, n - 1, 2):
        if n * n / 2 * (dropout + corrupt) ** k > sec:
            continue
        m = k + 1
        for t_k in range(m // 2 + 1, m + 1):
            if n * _binom_tail_ge(m, corrupt, t_k) > sec:
                continue
            if n * _binom_tail_lt(m, 1 - dropout, t_k) <= cor:
                return k, t_k
            break  # a larger t_k only makes correctness worse
    return None


# ----------------------------------------------------------------- a study's survivor threshold
def survivor_threshold(n: int, fraction: float | None = None, min_completed: int = 1) -> int:
    """How many of a round's ``n`` sites must survive every step: ``t``.

    ``t`` is never below the smallest strict majority ``⌊n/2⌋ + 1`` (and 2): with 2t > n two
    disjoint groups of survivors can never both complete the round, so a hub that splits the
    federation (or reruns a round over another group) never learns one site's input by
    subtracting two sums (Bonawitz et al. 2017, §4). Above that floor it is the larger of the
    study's ``min_completed`` (a round with fewer does not count anyway, and each extra
    required survivor adds to the noise a distributed-DP sum is guaranteed to hold) and, when
    the study sets one, ``⌈fraction·n⌉``. Without a fraction a 3-site study with
    ``min_completed = 2`` gets t = 2: one site may drop out of any step.
    """
    majority = n // 2 + 1
    wanted = math.ceil(fraction * n - 1e-9) if fraction is not None else 0
    return min(n, max(2, majority, min_completed, wanted))


def threshold_problems(n: int, fraction: float | None, min_completed: int) -> list[str]:
    """Why a secure study over rounds of ``n`` sites cannot keep its own promises (empty: it
    can). Refused: ``min_completed`` above ``n``; ``min_completed`` >= 2 that the survivor
    threshold (an explicit ``threshold`` or the strict majority) would never let a round
    finish with."""
    if n < 2:
        return [f"'secure_aggregation.protocol': secure aggregation needs at least 2 sites per "
                f"round, the study has {n}"]
    if min_completed > n:
        return [f"'strategy.min_completed': {min_completed} is more than the {n} sites a "
                "round has"]
    t = survivor_threshold(n, fraction, min_completed)
    if min_completed < 2 or t <= min_completed:
        return []
    if fraction is not None and t > n // 2 + 1:
        return [f"'secure_aggregation.threshold' = {fraction:g} needs {t} of the {n} sites to "
                f"survive every step, so a round can never finish with "
                f"'strategy.min_completed' = {min_completed}; lower the threshold (or remove "
                f"it: the threshold is then derived from min_completed) or raise "
                f"min_completed to {t}"]
    return [f"'strategy.min_completed' = {min_completed} cannot be met: secure aggregation "
            f"over {n} sites needs a strict majority ({t}) to survive every step (fewer would "
            f"let the hub learn a site's update by subtracting sums); set min_completed to "
            f"{t} or more (or 1: the threshold decides)"]
