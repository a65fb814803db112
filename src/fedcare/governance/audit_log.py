"""A signed, hash-chained, append-only audit trail (JSON Lines) that a regulator can check.

Why: "who approved which study, which site's update went into which model, who released it"
must be answerable after the fact by someone who trusts neither the hub's operator nor a site's.
Each party (the hub, each node) keeps its own log; every entry is signed by the key of the
actor who wrote it, so the keeper of the file cannot rewrite history it did not sign.

One entry is one line, the canonical JSON (:func:`canonical`: sorted keys, no whitespace,
ASCII only, no NaN) of::

    {"v": 1, "log": "hub", "seq": 7, "time": "2026-12-04T18:20:01.123456Z",
     "actor": "user:alice", "kind": "study_approved", "subject": "3f1c...e9",
     "details": {...}, "cites": [{"log": "site:alpha", "seq": 3, "hash": "..."}],
     "prev": "<sha256 hex of line 6's bytes>", "alg": "ed25519", "sig": "<base64>"}

* ``seq`` counts from 1 and ``prev`` is the SHA-256 of the previous line's exact bytes (64
  zeros for the first), so deleting, inserting, reordering or editing a line breaks the chain
  (Haber & Stornetta 1991; Schneier & Kelsey 1999, "Secure audit logs").
* ``sig`` signs the canonical JSON of every other field (``prev`` included), so a line cannot
  be edited or moved to another position, or another log (``log``), without the actor's key.
* A line must be exactly the canonical encoding of what it holds (and ``sig`` the canonical
  base64 of its bytes): any other spelling of the same content is refused, so that no
  single-byte edit can leave a line both valid and different.
* ``update_received`` entries carry a ``digest`` of the update, never its content; every
  entry's ``details`` are small (:data:`MAX_DETAILS_BYTES`) plain JSON.
* ``cites`` names entries of other logs (a node's ``task_received`` citing the hub's
  ``task_sent`` by seq and hash); :meth:`Verdict.confirms` checks a citation against the
  verdict of the cited log.

Keys (what we chose and why): the hub signs with **Ed25519** (RFC 8032: deterministic, no
nonce to get wrong, small fast signatures; :func:`generate_key`). A node signs with its
site's existing **EC P-256** key (``site.key`` of its startup kit; ECDSA with SHA-256, as its
privacy ledger does in :mod:`fedcare.privacy.dp.ledger`), so no second key has to be
distributed or revoked per site: the site certificate the coordinator already holds verifies
its log (:func:`load_public_key` reads a certificate or a public key). The algorithm is
written in the entry (``alg``) and must match the verifier's key for that actor; the entry
never chooses the key.

What a chain cannot show on its own is a cut at the end: the shorter file is a valid log. So
:func:`verify` takes an ``anchor``, a :class:`Head` (last seq and hash) obtained elsewhere -
another party's citation, or a :class:`SignedHead` the keeper published - and reports a log
that is shorter than it, or does not extend it. A torn last line (a crash mid-append) is
always reported, never dropped; :func:`append` refuses to write after one (fail closed: the
steward must look at the file).

Concurrency: :func:`append` holds an exclusive ``flock`` on the log while it reads the last
line and writes the next one with a single ``write`` to an ``O_APPEND`` descriptor, then
``fsync``; appends from several threads or processes therefore never interleave or fork the
chain. (POSIX only; fedcare's hub and nodes run on Linux.)

Not covered: an actor holding its own key can write false entries in its own name (the log
makes them attributable, not true); a keeper that deletes a whole log, or cuts its tail,
is caught only with an anchor; times are the writer's clock and are not checked for order.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import enum
import fcntl
import hashlib
import json
import math
import os
import queue
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from fedcare.core.errors import FedcareError
from fedcare.core.files import PRIVATE_FILE_MODE, atomic_write

FORMAT_VERSION = 1
GENESIS = "0" * 64
#: The canonical JSON of an entry's ``details`` may not be longer than this.
MAX_DETAILS_BYTES = 4096
#: Nor nest deeper than this (a dict in a list in a dict ...).
MAX_DETAILS_DEPTH = 4
#: A whole line may not be longer than this (details, citations and signature included).
MAX_LINE_BYTES = 16384
MAX_CITES = 16

_ACTOR = re.compile(r"(hub|(site|user):[a-z0-9][a-z0-9._@-]{0,99})")
_LOG = _ACTOR
_SUBJECT = re.compile(r"[A-Za-z0-9._:@/-]{0,200}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
_FIELDS = frozenset({"v", "log", "seq", "time", "actor", "kind", "subject", "details", "cites",
                     "prev", "alg", "sig"})
_ECDSA = ec.ECDSA(hashes.SHA256())

PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


class AuditError(FedcareError):
    """An entry cannot be written (bad field, torn log, wrong key), or a file is unreadable."""


class EventKind(enum.StrEnum):
    """What happened. A new kind is added here, so that a typo is an error, not a new kind."""

    SITE_ENROLLED = "site_enrolled"
    SITE_REVOKED = "site_revoked"
    USER_ADDED = "user_added"
    USER_REMOVED = "user_removed"
    POLICY_CHANGED = "policy_changed"
    STUDY_SUBMITTED = "study_submitted"
    STUDY_PENDING = "study_pending"      # a node learned of a study awaiting its decision
    STUDY_APPROVED = "study_approved"
    STUDY_REJECTED = "study_rejected"
    STUDY_REVOKED = "study_revoked"
    STUDY_LOADED = "study_loaded"        # a node read a study (content hash) for its data
    STUDY_ENDED = "study_ended"          # completed, failed or paused (its status)
    TASK_SENT = "task_sent"
    TASK_RECEIVED = "task_received"
    TASK_REFUSED = "task_refused"
    UPDATE_SENT = "update_sent"
    UPDATE_RECEIVED = "update_received"
    AGGREGATED = "aggregated"
    MODEL_RELEASED = "model_released"
    PRIVACY_CHARGED = "privacy_charged"  # a node charged its privacy ledger (epsilon)
    STUDY_CODE_FAILED = "study_code_failed"  # a study's own code failed in a node's sandbox
    POLICY_REFUSED = "policy_refused"    # a node's site policy refused a study (the rules)
    METRICS_WITHHELD = "metrics_withheld"  # a node's site policy kept metrics of a reply
    EXPORT_REQUESTED = "export_requested"
    EXPORT_APPROVED = "export_approved"
    EXPORT_REJECTED = "export_rejected"
    EXPORT_CHECKED = "export_checked"        # the airlock's automatic checks ran
    EXPORT_DECIDED = "export_decided"        # one site steward approved or rejected
    EXPORT_DOWNLOADED = "export_downloaded"  # the released bytes left the hub
    USER_REVOKED = "user_revoked"        # a hub user's token revoked (the row stays)


#: Kinds whose details must carry a ``digest`` (SHA-256 hex) of the data, never the data.
DIGEST_KINDS = frozenset({EventKind.UPDATE_RECEIVED, EventKind.UPDATE_SENT,
                          EventKind.AGGREGATED, EventKind.MODEL_RELEASED,
                          EventKind.EXPORT_REQUESTED, EventKind.EXPORT_CHECKED,
                          EventKind.EXPORT_DECIDED, EventKind.EXPORT_DOWNLOADED})


class ProblemKind(enum.StrEnum):
    """Why a log fails verification (the first problem found, see :class:`Problem`)."""

    BAD_JSON = "bad_json"               # not one JSON object, or not its canonical spelling
    BAD_FIELD = "bad_field"             # a field missing, unknown or of the wrong form
    TORN_TAIL = "torn_tail"             # the last line has no newline (crash mid-append?)
    DELETED = "deleted"                 # seq jumps: entries are missing
    REORDERED = "reordered"             # a seq out of order that appears elsewhere
    INSERTED = "inserted"               # a seq that repeats an earlier one
    CHAIN_BROKEN = "chain_broken"       # prev is not the hash of the line before
    WRONG_LOG = "wrong_log"             # an entry of another log spliced in
    UNKNOWN_ACTOR = "unknown_actor"     # no key for the actor: cannot be trusted
    BAD_SIGNATURE = "bad_signature"     # edited after signing, or forged without the key
    TRUNCATED = "truncated"             # shorter than the anchor
    ANCHOR_MISMATCH = "anchor_mismatch"  # the anchor's entry was replaced
    BAD_ANCHOR = "bad_anchor"           # the signed anchor itself does not verify


@dataclass(frozen=True)
class Citation:
    """A reference to an entry of another log, by its seq and the SHA-256 of its line."""

    log: str
    seq: int
    hash: str

    def to_json(self) -> dict[str, Any]:
        return {"log": self.log, "seq": self.seq, "hash": self.hash}


@dataclass(frozen=True)
class Head:
    """Where a log ends: the last entry's seq and line hash (seq 0 and GENESIS: empty)."""

    seq: int
    hash: str


@dataclass(frozen=True)
class SignedHead:
    """A :class:`Head` signed by ``actor`` (the keeper), to be stored or published apart
    from the log; :func:`verify` with it as ``anchor`` catches a cut tail."""

    log: str
    head: Head
    actor: str
    alg: str
    sig: str

    def signed_bytes(self) -> bytes:
        return canonical({"log": self.log, "seq": self.head.seq, "hash": self.head.hash,
                          "actor": self.actor, "alg": self.alg, "what": "audit-head"})

    def to_json(self) -> dict[str, Any]:
        """The signed head as plain JSON, to store or publish."""
        return {"log": self.log, "seq": self.head.seq, "hash": self.head.hash,
                "actor": self.actor, "alg": self.alg, "sig": self.sig}

    @classmethod
    def from_json(cls, doc: Any) -> SignedHead:
        """A signed head read back; its form is checked here, its signature by
        :func:`verify` (with the keeper's key)."""
        if not (isinstance(doc, dict) and set(doc) == {"log", "seq", "hash", "actor", "alg",
                                                        "sig"}
                and isinstance(doc["log"], str) and _LOG.fullmatch(doc["log"])
                and type(doc["seq"]) is int and doc["seq"] >= 0
                and isinstance(doc["hash"], str) and _HEX64.fullmatch(doc["hash"])
                and isinstance(doc["actor"], str) and _ACTOR.fullmatch(doc["actor"])
                and isinstance(doc["alg"], str) and isinstance(doc["sig"], str)):
            raise AuditError("not a signed audit head: {log, seq, hash, actor, alg, sig}")
        return cls(doc["log"], Head(doc["seq"], doc["hash"]), doc["actor"], doc["alg"],
                   doc["sig"])


@dataclass(frozen=True)
class Entry:
    """One verified-or-written entry; ``hash`` is the SHA-256 of its line."""

    log: str
    seq: int
    time: str
    actor: str
    kind: EventKind
    subject: str
    details: Mapping[str, Any]
    cites: tuple[Citation, ...]
    prev: str
    alg: str
    sig: str
    hash: str

    def citation(self) -> Citation:
        """How another log's entry refers to this one."""
        return Citation(self.log, self.seq, self.hash)

    @property
    def head(self) -> Head:
        """The log's head right after this entry (to anchor or sign with :func:`sign_head`)."""
        return Head(self.seq, self.hash)


@dataclass(frozen=True)
class Problem:
    """The first thing wrong with a log: which line, which seq (if it could be read), why."""

    kind: ProblemKind
    line: int
    seq: int | None
    reason: str

    def __str__(self) -> str:
        where = f"line {self.line}" + (f" (seq {self.seq})" if self.seq is not None else "")
        return f"{where}: {self.kind.value}: {self.reason}"


@dataclass(frozen=True)
class Verdict:
    """What :func:`verify` found: ``ok`` only if every line checked and the anchor holds."""

    ok: bool
    entries: int
    head: Head
    problem: Problem | None = None
    #: The hash of every entry that checked (seq -> line hash), for :meth:`confirms`.
    hashes: Mapping[int, str] = field(default_factory=dict, repr=False)
    log: str | None = None

    def confirms(self, citation: Citation) -> bool:
        """Whether this (verified) log holds the cited entry exactly. Fail closed: a citation
        of a log that did not verify, or of another log, is not confirmed."""
        return (self.ok and citation.log == self.log
                and self.hashes.get(citation.seq) == citation.hash)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "log": self.log, "entries": self.entries,
                "head": {"seq": self.head.seq, "hash": self.head.hash},
                "problem": None if self.problem is None else {
                    "kind": self.problem.kind.value, "line": self.problem.line,
                    "seq": self.problem.seq, "reason": self.problem.reason}}


# --- canonical bytes, keys, signatures ----------------------------------------------------
def canonical(doc: Any) -> bytes:
    """The one byte string a JSON value is hashed and signed as: sorted keys, no whitespace,
    ASCII with \\u escapes, NaN and infinities refused."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def line_hash(line: bytes) -> str:
    """The SHA-256 (hex) of one line's bytes, without its newline."""
    return hashlib.sha256(line).hexdigest()


def algorithm_of(key: PublicKey | PrivateKey) -> str:
    """``ed25519`` or ``ecdsa-p256-sha256``; any other key is refused."""
    if isinstance(key, (ed25519.Ed25519PublicKey, ed25519.Ed25519PrivateKey)):
        return "ed25519"
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)) and isinstance(
            key.curve, ec.SECP256R1):
        return "ecdsa-p256-sha256"
    raise AuditError(f"an audit key must be Ed25519 or EC P-256, not {type(key).__name__}")


def _sign(key: PrivateKey, data: bytes) -> str:
    ed = isinstance(key, ed25519.Ed25519PrivateKey)
    raw = key.sign(data) if ed else key.sign(data, _ECDSA)  # type: ignore[call-arg]
    return base64.b64encode(raw).decode("ascii")


def _verifies(key: PublicKey, alg: str, data: bytes, sig: str) -> bool:
    try:
        if algorithm_of(key) != alg:
            return False
        raw = base64.b64decode(sig, validate=True)
        # The canonical spelling only: base64 has spare bits, and a line that decodes to the
        # same signature under another spelling would be a different, undetected line.
        if base64.b64encode(raw).decode("ascii") != sig:
            return False
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(raw, data)
        else:
            key.verify(raw, data, _ECDSA)
    except (InvalidSignature, binascii.Error, ValueError, AuditError):
        return False
    return True


def generate_key() -> ed25519.Ed25519PrivateKey:
    """A new Ed25519 key, e.g. the hub's audit key."""
    return ed25519.Ed25519PrivateKey.generate()


def save_private_key(key: PrivateKey, path: Path) -> None:
    """Write a private key as unencrypted PKCS#8 PEM, readable by its owner only."""
    algorithm_of(key)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    atomic_write(Path(path), pem, mode=PRIVATE_FILE_MODE)


def public_pem(key: PrivateKey | PublicKey) -> bytes:
    """The public half as SubjectPublicKeyInfo PEM, to hand to verifiers."""
    public = key.public_key() if isinstance(
        key, (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey)) else key
    return public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key(path: Path) -> PrivateKey:
    """An Ed25519 or EC P-256 private key from a PEM file (a site's ``site.key`` serves)."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise AuditError(f"cannot load the audit key {path}: {exc}") from exc
    if not isinstance(key, (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey)):
        raise AuditError(f"{path}: an audit key must be Ed25519 or EC P-256")
    algorithm_of(key)
    return key


def load_public_key(path: Path) -> PublicKey:
    """An Ed25519 or EC P-256 public key from a PEM public key or certificate (a site's
    ``site.crt`` serves)."""
    try:
        data = Path(path).read_bytes()
        if b"CERTIFICATE" in data:
            key: Any = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except (OSError, ValueError, TypeError) as exc:
        raise AuditError(f"cannot load the audit public key {path}: {exc}") from exc
    if not isinstance(key, (ed25519.Ed25519PublicKey, ec.EllipticCurvePublicKey)):
        raise AuditError(f"{path}: an audit key must be Ed25519 or EC P-256")
    algorithm_of(key)
    return key


@dataclass(frozen=True)
class Signer:
    """An actor and its private key: what :func:`append` signs with."""

    actor: str
    key: PrivateKey

    def __post_init__(self) -> None:
        if not isinstance(self.actor, str) or not _ACTOR.fullmatch(self.actor):
            raise AuditError(f"actor {self.actor!r} must be 'hub', 'site:NAME' or 'user:NAME' "
                             "(lower case letters, digits, . _ @ -)")
        algorithm_of(self.key)

    @property
    def alg(self) -> str:
        return algorithm_of(self.key)


# --- validation of fields ------------------------------------------------------------------
def _check_details(value: Any, depth: int = 0) -> str | None:
    """Why ``value`` is not plain, small JSON, or None."""
    if depth > MAX_DETAILS_DEPTH:
        return f"details nest deeper than {MAX_DETAILS_DEPTH}"
    if value is None or isinstance(value, (bool, int, str)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else "details hold a non-finite number"
    if isinstance(value, (list, tuple)):
        return next((p for v in value if (p := _check_details(v, depth + 1))), None)
    if isinstance(value, dict):
        if not all(isinstance(k, str) and 0 < len(k) <= 64 for k in value):
            return "details keys must be strings of 1..64 characters"
        return next((p for v in value.values() if (p := _check_details(v, depth + 1))), None)
    return f"details hold a {type(value).__name__}, not plain JSON"


def _details_problem(kind: EventKind, details: Any) -> str | None:
    if not isinstance(details, dict):
        return "details must be a JSON object"
    problem = _check_details(details)
    if problem is None and len(canonical(details)) > MAX_DETAILS_BYTES:
        problem = f"details are longer than {MAX_DETAILS_BYTES} bytes (an audit entry carries " \
                  "digests and names, never data)"
    if problem is None and kind in DIGEST_KINDS:
        digest = details.get("digest")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            problem = f"a {kind.value} entry must carry details.digest, the SHA-256 (64 lower " \
                      "hex) of the data, and never the data itself"
    return problem


def _cites_problem(cites: Any) -> str | None:
    if not isinstance(cites, list) or len(cites) > MAX_CITES:
        return f"cites must be a list of at most {MAX_CITES} citations"
    for c in cites:
        if not (isinstance(c, dict) and set(c) == {"log", "seq", "hash"}
                and isinstance(c["log"], str) and _LOG.fullmatch(c["log"])
                and type(c["seq"]) is int and c["seq"] >= 1
                and isinstance(c["hash"], str) and _HEX64.fullmatch(c["hash"])):
            return "each citation must be {log, seq >= 1, hash (64 lower hex)}"
    return None


def _fields_problem(doc: dict[str, Any]) -> str | None:
    """Why a parsed line is not a well-formed entry (signature and chain aside), or None."""
    if set(doc) != _FIELDS:
        missing, extra = sorted(_FIELDS - set(doc)), sorted(set(doc) - _FIELDS)
        return f"fields missing {missing}, unknown {extra}"
    checks: list[tuple[bool, str]] = [
        (doc["v"] == FORMAT_VERSION and type(doc["v"]) is int,
         f"format version must be {FORMAT_VERSION}"),
        (isinstance(doc["log"], str) and bool(_LOG.fullmatch(doc["log"])), "bad log name"),
        (type(doc["seq"]) is int and doc["seq"] >= 1, "seq must be an integer >= 1"),
        (isinstance(doc["time"], str) and bool(_TIME.fullmatch(doc["time"])),
         "time must be UTC ISO 8601 with microseconds and Z"),
        (isinstance(doc["actor"], str) and bool(_ACTOR.fullmatch(doc["actor"])), "bad actor"),
        (doc["kind"] in EventKind.__members__.values(),
         f"unknown event kind {doc['kind']!r}"),
        (isinstance(doc["subject"], str) and bool(_SUBJECT.fullmatch(doc["subject"])),
         "bad subject"),
        (isinstance(doc["prev"], str) and bool(_HEX64.fullmatch(doc["prev"])),
         "prev must be 64 lower hex"),
        (doc["alg"] in ("ed25519", "ecdsa-p256-sha256"), "unknown signature algorithm"),
        (isinstance(doc["sig"], str), "sig must be a string"),
    ]
    for ok, why in checks:
        if not ok:
            return why
    if not _time_ok(doc["time"]):
        return "time is not a real date"
    return _details_problem(EventKind(doc["kind"]), doc["details"]) or _cites_problem(
        doc["cites"])


def _time_ok(text: str) -> bool:
    try:
        dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return False
    return True


def _signed_part(doc: Mapping[str, Any]) -> bytes:
    return canonical({k: v for k, v in doc.items() if k != "sig"})


def _entry(doc: Mapping[str, Any], digest: str) -> Entry:
    return Entry(log=doc["log"], seq=doc["seq"], time=doc["time"], actor=doc["actor"],
                 kind=EventKind(doc["kind"]), subject=doc["subject"], details=doc["details"],
                 cites=tuple(Citation(c["log"], c["seq"], c["hash"]) for c in doc["cites"]),
                 prev=doc["prev"], alg=doc["alg"], sig=doc["sig"], hash=digest)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- writing ---------------------------------------------------------------------------------
def _last_line(fd: int) -> bytes | None:
    """The last line of the file (without its newline), None if the file is empty. Raises
    :class:`AuditError` when the file does not end with a newline (a torn append)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return None
    if os.pread(fd, 1, size - 1) != b"\n":
        raise AuditError("the audit log's last line is incomplete (a crash during an append, "
                         "or tampering); nothing is appended until the steward has checked "
                         "the file (fedcare.governance.audit_log.verify)")
    chunk, end = b"", size - 1
    while end > 0:
        start = max(0, end - 4096)
        chunk = os.pread(fd, end - start, start) + chunk
        end = start
        if b"\n" in chunk:
            break
    return chunk.rsplit(b"\n", 1)[-1]


def append(path: Path, signer: Signer, kind: EventKind | str, subject: str = "",
           details: Mapping[str, Any] | None = None, *, log: str | None = None,
           cites: Sequence[Citation] = ()) -> Entry:
    """Sign and append one entry to the log at ``path`` (created if absent); returns it.

    ``log`` names the log (default: the signer's actor, e.g. ``hub``); every entry of a file
    must name the same log. Everything is validated before anything is written: an entry
    :func:`verify` would refuse is never appended."""
    path = Path(path)
    try:
        event = EventKind(kind)
    except ValueError:
        raise AuditError(f"unknown event kind {kind!r}; one of "
                         f"{', '.join(k.value for k in EventKind)}") from None
    log = signer.actor if log is None else log
    doc: dict[str, Any] = {
        "v": FORMAT_VERSION, "log": log, "seq": 0, "time": _now(), "actor": signer.actor,
        "kind": event.value, "subject": subject,
        "details": json.loads(canonical(dict(details or {}))) if _is_plain(details) else details,
        "cites": [c.to_json() for c in cites], "prev": GENESIS, "alg": signer.alg, "sig": ""}
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        last = _last_line(fd)
        if last is not None:
            try:
                before = json.loads(last)
                doc["seq"], doc["prev"] = int(before["seq"]) + 1, line_hash(last)
                if before["log"] != log:
                    raise AuditError(f"{path} is the log of {before['log']!r}, not {log!r}")
            except (ValueError, TypeError, KeyError) as exc:
                raise AuditError(f"the last line of {path} is not an audit entry ({exc}); "
                                 "nothing is appended until the steward has checked the "
                                 "file") from None
        else:
            doc["seq"] = 1
        problem = _fields_problem({**doc, "sig": ""})
        if problem is not None:
            raise AuditError(f"refused audit entry: {problem}")
        doc["sig"] = _sign(signer.key, _signed_part(doc))
        line = canonical(doc)
        if len(line) > MAX_LINE_BYTES:
            raise AuditError(f"refused audit entry: longer than {MAX_LINE_BYTES} bytes")
        written = os.write(fd, line + b"\n")
        if written != len(line) + 1:  # a partial write leaves a torn line: say so
            raise AuditError(f"short write to {path} ({written} of {len(line) + 1} bytes)")
        os.fsync(fd)
    finally:
        os.close(fd)  # closing releases the lock
    return _entry(doc, line_hash(line))


def _is_plain(details: Mapping[str, Any] | None) -> bool:
    """Whether details can be put through canonical JSON (refusals get a clearer message)."""
    try:
        canonical(dict(details or {}))
    except (TypeError, ValueError):
        return False
    return _check_details(dict(details or {})) is None


def sign_head(signer: Signer, log: str, head: Head) -> SignedHead:
    """The keeper's signature over a log's head, to publish or store apart from the log."""
    unsigned = SignedHead(log, head, signer.actor, signer.alg, "")
    return SignedHead(log, head, signer.actor, signer.alg,
                      _sign(signer.key, unsigned.signed_bytes()))


# --- reading and verifying ------------------------------------------------------------------
def _lines(path: Path) -> Iterator[tuple[int, bytes, bool]]:
    """(line number from 1, bytes without newline, whether it ended with a newline)."""
    with open(path, "rb") as fh:
        number = 0
        while raw := fh.readline(MAX_LINE_BYTES + 2):
            number += 1
            if len(raw) > MAX_LINE_BYTES + 1:  # too long to be an entry: skip the rest of it
                while not raw.endswith(b"\n") and (rest := fh.readline(1 << 20)):
                    raw = raw[:MAX_LINE_BYTES + 1] + rest[-1:]
            complete = raw.endswith(b"\n")
            yield number, raw[:-1] if complete else raw, complete


def _parse(line: bytes) -> tuple[dict[str, Any] | None, str | None]:
    if len(line) > MAX_LINE_BYTES:
        return None, f"longer than {MAX_LINE_BYTES} bytes"
    try:
        doc = json.loads(line.decode("ascii"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        return None, f"not JSON ({exc})"
    if not isinstance(doc, dict):
        return None, "not a JSON object"
    try:
        if canonical(doc) != line:
            return doc, "not the canonical JSON of its content (re-spelt or re-spaced)"
    except (TypeError, ValueError) as exc:
        return doc, f"not canonical JSON ({exc})"
    return doc, None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _seq_of(doc: Mapping[str, Any] | None) -> int | None:
    seq = doc.get("seq") if doc is not None else None
    return seq if type(seq) is int else None


def verify(path: Path, keys: Mapping[str, PublicKey], *,
           anchor: Head | SignedHead | None = None, log: str | None = None) -> Verdict:
    """Check every line of the log at ``path``: canonical JSON, fields, seq order, the hash
    chain, the actor's key (``keys``: actor -> public key; an actor without a key fails) and
    its signature; then the ``anchor`` (a head from elsewhere) if given. ``log``: the log's
    expected name (default: the first entry's).

    Returns a :class:`Verdict` naming the first bad entry and why. Fail closed: anything not
    positively checked is a problem; a missing file is an error, an empty one is an empty log.
    """
    path = Path(path)
    if not path.is_file():
        raise AuditError(f"audit log {path} does not exist")
    _check_keys(keys)
    verdict = _check(list(_lines(path)), keys, log, from_first=False)
    if anchor is not None and verdict.ok:
        problem = _anchor_problem(anchor, verdict.head, verdict.hashes, keys, verdict.log,
                                  verdict.entries)
        if problem is not None:
            return replace(verdict, ok=False, problem=problem)
    return verdict


def _check(lines: list[tuple[int, bytes, bool]], keys: Mapping[str, PublicKey],
           log: str | None, *, from_first: bool) -> Verdict:
    """The checks of :func:`verify` over ``lines``. ``from_first``: the lines are a window
    of a log (an export), so the first entry's seq and prev are taken as given (its
    signature still covers them) instead of 1 and GENESIS."""
    docs: list[tuple[int, bytes, bool, dict[str, Any] | None, str | None]] = [
        (n, line, complete, *_parse(line)) for n, line, complete in lines]
    seqs_at = [_seq_of(d) for _n, _l, _c, d, _e in docs]
    hashes: dict[int, str] = {}
    prev, expected = GENESIS, 1
    if from_first and docs and docs[0][3] is not None and _seq_of(docs[0][3]) is not None \
            and isinstance(docs[0][3].get("prev"), str):
        expected, prev = int(docs[0][3]["seq"]), str(docs[0][3]["prev"])

    def fail(kind: ProblemKind, number: int, seq: int | None, reason: str) -> Verdict:
        return Verdict(False, len(hashes), Head(expected - 1, prev),
                       Problem(kind, number, seq, reason), hashes, log)

    for index, (number, line, complete, doc, error) in enumerate(docs):
        seq = _seq_of(doc)
        if not complete:
            return fail(ProblemKind.TORN_TAIL, number, seq,
                        "the last line has no newline: an append was cut short (a crash) or "
                        "the file was cut; it is not accepted as an entry")
        if error is not None or doc is None:
            return fail(ProblemKind.BAD_JSON, number, seq, error or "not JSON")
        problem = _fields_problem(doc)
        if problem is not None:
            return fail(ProblemKind.BAD_FIELD, number, seq, problem)
        seq = doc["seq"]
        if log is None:
            log = doc["log"]
        if doc["log"] != log:
            return fail(ProblemKind.WRONG_LOG, number, seq,
                        f"entry of log {doc['log']!r} in the log of {log!r}")
        if seq != expected:
            kind, reason = _seq_problem(seq, expected, seqs_at[index + 1:])
            return fail(kind, number, seq, reason)
        if doc["prev"] != prev:
            return fail(ProblemKind.CHAIN_BROKEN, number, seq,
                        "prev is not the hash of the line before it: the previous line was "
                        "edited, or this entry was moved or inserted")
        key = keys.get(doc["actor"])
        if key is None:
            return fail(ProblemKind.UNKNOWN_ACTOR, number, seq,
                        f"no key for actor {doc['actor']!r}: the entry cannot be trusted")
        if not _verifies(key, doc["alg"], _signed_part(doc), doc["sig"]):
            return fail(ProblemKind.BAD_SIGNATURE, number, seq,
                        f"the signature is not {doc['actor']}'s over this content: the entry "
                        "was edited after signing, or forged without the actor's key")
        hashes[seq] = prev = line_hash(line)
        expected = seq + 1
    return Verdict(True, len(hashes), Head(expected - 1, prev), None, hashes, log)


def _check_keys(keys: Mapping[str, PublicKey]) -> None:
    for actor, public in keys.items():
        if not isinstance(public, (ed25519.Ed25519PublicKey, ec.EllipticCurvePublicKey)):
            raise AuditError(f"the key of {actor!r} must be a public Ed25519 or EC P-256 key, "
                             f"not {type(public).__name__}")
        algorithm_of(public)


def _seq_problem(seq: int, expected: int, later: list[int | None]) -> tuple[ProblemKind, str]:
    """Why the entry at a position has ``seq`` where ``expected`` was due."""
    if seq < expected:
        return (ProblemKind.INSERTED,
                f"seq {seq} comes again after seq {expected - 1}: an entry was inserted or "
                "replayed (or entries were reordered)")
    if expected in later:
        return (ProblemKind.REORDERED,
                f"seq {expected} was expected here but comes later: entries were reordered")
    missing = f"seq {expected}" if seq == expected + 1 else f"seqs {expected}..{seq - 1}"
    return ProblemKind.DELETED, f"{missing} missing before seq {seq}: entries were deleted"


def _anchor_problem(anchor: Head | SignedHead, head: Head, hashes: Mapping[int, str],
                    keys: Mapping[str, PublicKey], log: str | None,
                    lines: int) -> Problem | None:
    if isinstance(anchor, SignedHead):
        key = keys.get(anchor.actor)
        if key is None or not _verifies(key, anchor.alg, anchor.signed_bytes(), anchor.sig):
            return Problem(ProblemKind.BAD_ANCHOR, lines, None,
                           f"the signed head is not {anchor.actor}'s signature (or its key "
                           "is unknown): it cannot vouch for the log")
        if log is not None and anchor.log != log:
            return Problem(ProblemKind.BAD_ANCHOR, lines, None,
                           f"the signed head is of log {anchor.log!r}, not {log!r}")
        anchor = anchor.head
    if anchor.seq > head.seq:
        return Problem(ProblemKind.TRUNCATED, lines, head.seq or None,
                       f"the log ends at seq {head.seq} but its anchor says seq {anchor.seq}: "
                       "entries were cut from the end (or the file was replaced)")
    if anchor.seq > 0 and hashes.get(anchor.seq) != anchor.hash:
        return Problem(ProblemKind.ANCHOR_MISMATCH, lines, anchor.seq,
                       f"entry {anchor.seq} is not the one the anchor names: the history up "
                       "to it was replaced")
    return None


def read(path: Path) -> Iterator[Entry]:
    """Every entry as written, NOT verified (use :func:`verify` first); a line that is not an
    entry raises :class:`AuditError`."""
    for number, line, complete in _lines(Path(path)):
        doc, error = _parse(line)
        if not complete or error is not None or doc is None or _fields_problem(doc):
            raise AuditError(f"{path} line {number} is not an audit entry")
        yield _entry(doc, line_hash(line))


def export(path: Path, out: IO[str] | Path, keys: Mapping[str, PublicKey], *,
           since: dt.datetime | None = None, until: dt.datetime | None = None,
           anchor: Head | SignedHead | None = None) -> Verdict:
    """Write the entries with ``since <= time < until`` for a regulator, as JSON Lines: a
    header line ``{"fedcare_audit_export": 1, "verdict": ..., "since": ..., "until": ...}``
    then each entry's line exactly as stored (so its signature and hash can be re-checked).

    The whole log is verified first and the verdict goes in the header, good or bad: an
    export never hides a broken log. Only the entries before the first problem are exported
    (what comes after it cannot be vouched for)."""
    for bound in (since, until):
        if bound is not None and bound.tzinfo is None:
            raise AuditError("export since/until must be timezone-aware datetimes")
    verdict = verify(path, keys, anchor=anchor)
    header = {"fedcare_audit_export": 1, "verdict": verdict.to_json(),
              "since": since.isoformat() if since else None,
              "until": until.isoformat() if until else None}
    chosen: list[bytes] = []
    for _number, line, complete in _lines(Path(path)):
        doc, error = _parse(line)
        seq = _seq_of(doc)
        if not complete or error or doc is None or seq is None or seq not in verdict.hashes \
                or verdict.hashes[seq] != line_hash(line):
            break
        when = dt.datetime.strptime(doc["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=dt.UTC)
        if (since is None or when >= since) and (until is None or when < until):
            chosen.append(line)
    header["entries"] = len(chosen)
    text = canonical(header).decode("ascii") + "\n" + "".join(
        line.decode("ascii") + "\n" for line in chosen)
    if isinstance(out, Path):
        atomic_write(out, text.encode("ascii"))
    else:
        out.write(text)
    return verdict


def verify_export(path: Path, keys: Mapping[str, PublicKey]) -> Verdict:
    """What a regulator runs on a file :func:`export` wrote: the header, then every entry's
    form, seq order, hash chain and signature within the window (its first entry's seq and
    prev are taken as given, unless it is seq 1, which must follow GENESIS), and that the
    header's entry count and log match. The keeper's own verdict in the header is reported
    by the caller, never trusted here."""
    path = Path(path)
    _check_keys(keys)
    lines = list(_lines(path))
    if not lines:
        raise AuditError(f"{path} is empty: not an audit export")
    header, error = _parse(lines[0][1])
    if error is not None or header is None or header.get("fedcare_audit_export") != 1:
        raise AuditError(f"{path} does not start with an audit export header")
    body = lines[1:]
    first, _ = _parse(body[0][1]) if body else (None, None)
    from_first = first is not None and _seq_of(first) not in (None, 1)
    log = header.get("verdict", {}).get("log") if isinstance(header.get("verdict"),
                                                              dict) else None
    verdict = _check(body, keys, log if isinstance(log, str) else None, from_first=from_first)
    if verdict.ok and header.get("entries") != verdict.entries:
        return replace(verdict, ok=False, problem=Problem(
            ProblemKind.TRUNCATED, len(lines), None,
            f"the header says {header.get('entries')!r} entries, the export holds "
            f"{verdict.entries}"))
    return verdict


class OrderedAppender:
    """Hands audit entries to ``write`` in call order: from one daemon thread when
    ``background`` (so an entry's fsync is not on the caller's path - the hub's round, the
    node's reply), else at once. Shared by the hub's and the nodes' trails; :meth:`flush`
    waits until everything recorded so far is written."""

    def __init__(self, write: Callable[[EventKind, str, Mapping[str, Any]], None], *,
                 background: bool, name: str) -> None:
        self._write = write
        self._queue: queue.Queue[tuple[EventKind, str, Mapping[str, Any]]] | None = None
        if background:
            self._queue = queue.Queue()
            threading.Thread(target=self._drain, daemon=True, name=name).start()

    def _drain(self) -> None:
        assert self._queue is not None
        while True:
            item = self._queue.get()
            try:
                self._write(*item)
            finally:
                self._queue.task_done()

    def record(self, kind: EventKind, subject: str, details: Mapping[str, Any]) -> None:
        if self._queue is not None:
            self._queue.put((kind, subject, details))
        else:
            self._write(kind, subject, details)

    def flush(self) -> None:
        if self._queue is not None:
            self._queue.join()
