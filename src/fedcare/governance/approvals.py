"""A study's approval by its sites, as a small state machine without I/O.

A networked study runs only once *every* participating site's data steward approved its exact
content hash (:func:`fedcare.config.content_hash`). Each site decides on its own, at its node
(``fedcare node approve|reject|revoke``), and its node reports the decision to the hub. The
hub reads the decisions with :func:`verdict`:

- every site approved: the study starts;
- any site rejected it, or its node refused it (a site-policy violation, say): the study ends
  ``rejected`` with that site's reason;
- the deadline passed with sites still undecided: the study ends ``expired``, naming them;
- otherwise it keeps waiting (*pending approval*): it does not fail.

Fail-closed: a site with no decision has not approved. After the start, a site that revokes
its approval (or refuses a task) is *withdrawn*: it is never sent the model again
(:func:`withdrawn`). Used by the hub and the node alike; imports nothing but the standard
library.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["HASH_PREFIX_MIN", "Decision", "Verdict", "VerdictKind", "check_hash_prefix",
           "verdict", "withdrawn"]

#: The shortest prefix of a content hash a steward may type (8 hex digits, 32 bits).
HASH_PREFIX_MIN = 8
_HEX = re.compile(r"[0-9a-f]+")


class Decision(enum.StrEnum):
    """What a site said about a study's content hash."""

    APPROVED = "approved"
    #: The steward said no (``fedcare node reject --why``).
    REJECTED = "rejected"
    #: Approved, then withdrawn (``fedcare node revoke --why``): no further task is answered.
    REVOKED = "revoked"
    #: The node refused the study itself (its site policy, a missing dataset, ...).
    REFUSED = "refused"

    @property
    def negative(self) -> bool:
        return self is not Decision.APPROVED


class VerdictKind(enum.StrEnum):
    WAITING = "waiting"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"


@dataclass(frozen=True)
class Verdict:
    kind: VerdictKind
    #: Why (rejected: which site and its reason; expired: which sites did not answer).
    reason: str | None = None
    #: The sites still undecided.
    waiting: tuple[str, ...] = ()


def verdict(sites: Iterable[str], decisions: Mapping[str, tuple[Decision, str | None]], *,
            expired: bool = False) -> Verdict:
    """Where a study waiting for approval stands, from each site's latest decision
    (``{site: (decision, reason)}``). ``expired``: its approval deadline has passed."""
    sites = list(sites)
    for site in sites:
        got = decisions.get(site)
        if got is not None and got[0].negative:
            why = f": {got[1]}" if got[1] else ""
            return Verdict(VerdictKind.REJECTED, f"site {site} {got[0].value} the study{why}")
    waiting = tuple(s for s in sites if s not in decisions)
    if not waiting:
        return Verdict(VerdictKind.APPROVED)
    if expired:
        return Verdict(VerdictKind.EXPIRED,
                       f"the approval deadline passed before sites {list(waiting)} decided",
                       waiting)
    return Verdict(VerdictKind.WAITING, None, waiting)


def withdrawn(decision: Decision | None) -> bool:
    """Whether a site of a running study must never be sent its model again."""
    return decision is not None and decision.negative


def check_hash_prefix(value: str) -> str:
    """A content hash or a prefix of one, lower-cased; a clear ``ValueError`` otherwise."""
    text = value.strip().lower()
    if not _HEX.fullmatch(text) or len(text) > 64:
        raise ValueError(f"{value!r} is not a study content hash (hex digits, as `fedcare "
                         "node studies` or `fedcare study hash` print it)")
    if len(text) < HASH_PREFIX_MIN:
        raise ValueError(f"{value!r} is too short: give at least {HASH_PREFIX_MIN} hex digits "
                         "of the content hash")
    return text
