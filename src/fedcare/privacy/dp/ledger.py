"""A site's own privacy ledger: append-only, hash-chained, checked before every task.

The site, not the hub, decides how much privacy its data may spend (NVFlare-style site-owned
policy, deny by default). Each task that touches data is *charged* before it runs:
:meth:`PrivacyLedger.charge` validates the entry, composes every DP event already in the
ledger plus this one with a real accountant (``dp-accounting``), refuses with
:class:`PrivacyBudgetError` past the site's ``max_epsilon``, and only then appends one
JSON line (write + flush + fsync of an ``O_APPEND`` file; the file is never rewritten,
except once by the steward to sign a ledger from before signatures,
:meth:`PrivacyLedger.sign_unsigned`).

Tamper evidence, in three layers (:meth:`PrivacyLedger.verify`; while the ledger has any
problem, charging refuses - fail closed - and the site steward must look at the file):

1. **Hash chain.** Every line carries ``prev``, the SHA-256 of the previous line's bytes (64
   zeros for the first), so editing or deleting a line breaks the chain at the next one. A
   torn last line (power cut during an append) is reported, never silently dropped.
2. **Signatures.** Every line carries ``sig``, an ECDSA P-256 / SHA-256 signature by the
   site's own key (``site.key`` of its startup kit) over the entry and its ``prev``, checked
   with the site certificate's public key (:class:`LedgerKey`). A chain alone can be
   recomputed by anyone who can write the file; a rewrite now needs the site's private key.
   Unsigned lines (ledgers written before entries were signed) are reported, not trusted:
   a signed ledger stripped of its signatures would otherwise pass as an old one.
3. **Anchor.** Neither detects a cut at the end, or a deleted file: what is left is a valid
   shorter ledger. So the node tells the hub its :class:`LedgerHead` (entry count and last
   line's hash) with every reply; the hub keeps the longest one per site and answers with it,
   and the node keeps the acknowledged head (:mod:`fedcare.node.ledger_anchor`). A ledger
   that is shorter than, or does not extend, its :attr:`PrivacyLedger.anchor` was truncated,
   deleted or replaced. The hash of line k commits to lines 1..k through the chain, so one
   (count, hash) pair pins the whole acknowledged prefix.

Privacy units: DP-SGD entries are record-level; DP-FedAvg entries are site-level (the whole
site's contribution added or removed), charged at sample rate 1 per participated round because
amplification by sampling does not hold against the hub that picked the sample. Non-DP tasks
(``mechanism = "none"``) are recorded; with ``require_dp = true`` they are refused, otherwise
they void the formal guarantee, which :meth:`PrivacyLedger.spent` reports (``non_dp_tasks``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import hashlib
import json
import math
import os
import re
import threading
from collections.abc import Collection, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import Field

from fedcare.core.errors import ConfigError, ValidationError
from fedcare.core.files import PRIVATE_FILE_MODE, atomic_write, fsync_dir
from fedcare.core.settings import Section, load_toml
from fedcare.privacy.dp.accounting import epsilon_of, sampled_gaussian_event
from fedcare.privacy.dp.errors import LedgerError, PrivacyBudgetError
from fedcare.privacy.dp.spec import Accountant, Mechanism, check_finite_number, parse_enum

GENESIS = "0" * 64
#: The HTTP header a node sends its ledger head in (``<count>:<sha256 hex>``).
LEDGER_HEAD_HEADER = "X-Fedcare-Ledger-Head"
_HEAD = re.compile(r"(0|[1-9][0-9]{0,17}):([0-9a-f]{64})")
_SIGNATURE = ec.ECDSA(hashes.SHA256())


@dataclass(frozen=True)
class SitePrivacyPolicy:
    """The site's limits, from its local policy file::

        max_epsilon = 8.0      # cumulative epsilon this site's data may spend
        delta = 1e-5           # at this delta; studies asking a larger delta are refused
        accountant = "pld"     # or "rdp"
        require_dp = true      # refuse tasks without DP
        trust_hub_noise = false  # central DP-FedAvg: the hub adds the noise, so against the
                                 # hub the site's update is un-noised; refused unless true
    """

    max_epsilon: float
    delta: float
    accountant: Accountant = Accountant.PLD
    require_dp: bool = False
    trust_hub_noise: bool = False

    def __post_init__(self) -> None:
        problems = check_finite_number(self.max_epsilon, "max_epsilon", non_negative=True)
        problems += check_finite_number(self.delta, "delta", positive=True)
        if not problems and not self.delta < 1:
            problems.append(f"delta must be < 1, got {self.delta!r}")
        if not isinstance(self.require_dp, bool):
            problems.append(f"require_dp must be true or false, got {self.require_dp!r}")
        if problems:
            raise ConfigError(problems)
        object.__setattr__(self, "accountant",
                           parse_enum(Accountant, self.accountant, "accountant"))

    @classmethod
    def load(cls, path: Path) -> SitePrivacyPolicy:
        """Read the policy TOML. A missing or invalid file is an error: the caller must deny
        every task that touches data (fail closed) unless the node config opts out."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"site privacy policy {path} does not exist; create it (e.g. "
                              "max_epsilon = 8.0, delta = 1e-5) - without it the site must "
                              "refuse every task that touches data", source=str(path))
        doc: _PolicyFile = load_toml(path, _PolicyFile, what="site privacy policy")
        try:
            return cls(**doc.model_dump())
        except ConfigError as exc:
            raise ConfigError(exc.problems, source=str(path)) from None


class _PolicyFile(Section):
    """The policy file's schema (read through the one settings loader: errors name the key)."""

    max_epsilon: float = Field(ge=0, le=1e6, description=(
        "Cumulative epsilon this site's data may spend."))
    delta: float = Field(gt=0, lt=1, description=(
        "At this delta; studies asking a larger delta are refused."))
    accountant: Literal["pld", "rdp"] = Field("pld", description="pld (tight) or rdp.")
    require_dp: bool = Field(False, description="Refuse tasks without DP.")
    trust_hub_noise: bool = Field(False, description=(
        "Central DP-FedAvg: the hub adds the noise, so against the hub the site's update is "
        "un-noised; refused unless true."))


@dataclass(frozen=True)
class LedgerEntry:
    """One charged task. ``time`` (UTC, ISO 8601) is filled in when omitted."""

    study: str
    round: int
    task_id: str
    mechanism: Mechanism
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    time: str = field(default="")

    def __post_init__(self) -> None:
        object.__setattr__(self, "mechanism", parse_enum(Mechanism, self.mechanism, "mechanism"))
        if not self.time:
            object.__setattr__(self, "time", dt.datetime.now(dt.UTC).isoformat())
        problems = self.problems()
        if problems:
            raise ConfigError(problems)

    def problems(self) -> list[str]:
        p = []
        for key in ("study", "task_id", "time"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value:
                p.append(f"{key} must be a non-empty string, got {value!r}")
        for key in ("round", "steps"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                p.append(f"{key} must be an integer >= 0, got {value!r}")
        dp = self.mechanism is not Mechanism.NONE
        p += check_finite_number(self.noise_multiplier, "noise_multiplier", positive=dp,
                                 non_negative=True)
        p += check_finite_number(self.sample_rate, "sample_rate", positive=True)
        p += check_finite_number(self.delta, "delta", positive=True)
        if not p and self.sample_rate > 1:
            p.append(f"sample_rate must be <= 1, got {self.sample_rate!r}")
        if not p and not self.delta < 1:
            p.append(f"delta must be < 1, got {self.delta!r}")
        if dp and not p and self.steps < 1:
            p.append("steps must be >= 1 for a DP entry")
        return p

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "mechanism": self.mechanism.value}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LedgerEntry:
        names = {"study", "round", "task_id", "mechanism", "noise_multiplier", "sample_rate",
                 "steps", "delta", "time"}
        missing = names - set(d)
        if missing:
            raise ConfigError(f"ledger entry lacks {sorted(missing)}")
        return cls(**{k: d[k] for k in names})


@dataclass(frozen=True)
class Spent:
    """Cumulative privacy of the ledger's DP entries at the policy's delta."""

    epsilon: float
    delta: float
    dp_tasks: int
    non_dp_tasks: int


@dataclass(frozen=True)
class LedgerHead:
    """How far a ledger goes: its number of complete lines and the SHA-256 of the last one
    (:data:`GENESIS` for an empty ledger). Written ``<count>:<hash>`` on the wire."""

    count: int
    hash: str

    def __post_init__(self) -> None:
        if (isinstance(self.count, bool) or not isinstance(self.count, int)
                or not isinstance(self.hash, str)
                or not _HEAD.fullmatch(f"{self.count}:{self.hash}")
                or (self.count == 0) != (self.hash == GENESIS)):
            raise ValidationError(f"not a ledger head: count {self.count!r}, hash {self.hash!r}"
                                  " (want an entry count and the 64-hex SHA-256 of its last "
                                  "line; 0 with 64 zeros for an empty ledger)")

    @classmethod
    def parse(cls, text: object) -> LedgerHead:
        """Read ``<count>:<hash>``; a :class:`ValidationError` names what is wrong."""
        match = _HEAD.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise ValidationError(f"{LEDGER_HEAD_HEADER} must be <entry count>:<sha256 hex of "
                                  f"the last line>, got {str(text)[:100]!r}")
        try:
            return cls(int(match[1]), match[2])
        except ValidationError as exc:
            raise ValidationError(f"{LEDGER_HEAD_HEADER}: {exc.message}") from None

    def __str__(self) -> str:
        return f"{self.count}:{self.hash}"


class LedgerKey:
    """The site's key pair for its ledger: the private key signs new entries (at the node),
    the public key of the site certificate verifies every entry (anyone holding the kit's
    certificate can check the ledger; only the key's holder can write a valid one).

    ECDSA on P-256 with SHA-256 - the curve of every fedcare key, so the kit's ``site.key``
    serves (Johnson, Menezes & Vanstone 2001; FIPS 186-5)."""

    def __init__(self, public: ec.EllipticCurvePublicKey,
                 private: ec.EllipticCurvePrivateKey | None = None) -> None:
        if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(
                public.curve, ec.SECP256R1):
            raise ConfigError("a ledger key must be an EC P-256 public key")
        if private is not None and (not isinstance(private, ec.EllipticCurvePrivateKey)
                                    or private.public_key() != public):
            raise ConfigError("the ledger's private key does not belong to the site "
                              "certificate's public key (a mixed-up startup kit?)")
        self.public = public
        self.private = private

    @classmethod
    def from_files(cls, cert: Path, key: Path | None = None) -> LedgerKey:
        """The site's key from its certificate (and, to sign, its private key file): the
        node reads their paths from its startup kit (:func:`fedcare.node.ledger_anchor.
        ledger_key`)."""
        try:
            public = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
            private = (serialization.load_pem_private_key(key.read_bytes(), password=None)
                       if key is not None else None)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"cannot load the site's ledger key ({cert.name}"
                              f"{', ' + key.name if key is not None else ''}): {exc}") from exc
        if not isinstance(public, ec.EllipticCurvePublicKey) or (
                private is not None and not isinstance(private, ec.EllipticCurvePrivateKey)):
            raise ConfigError(f"the site key ({cert.name}) is not an EC key; the ledger signs "
                              "with the site's EC P-256 key (re-issue the startup kit)")
        return cls(public, private)

    def sign(self, data: bytes) -> str:
        if self.private is None:
            raise LedgerError("this ledger key can only verify (no site.key): it cannot "
                              "sign a new entry")
        return base64.b64encode(self.private.sign(data, _SIGNATURE)).decode("ascii")

    def verifies(self, data: bytes, signature: object) -> bool:
        if not isinstance(signature, str):
            return False
        try:
            self.public.verify(base64.b64decode(signature, validate=True), data, _SIGNATURE)
        except (InvalidSignature, binascii.Error, ValueError):
            return False
        return True


@dataclass
class _Read:
    entries: list[LedgerEntry]
    #: The hash of every complete line, in order (line k's hash commits to lines 1..k).
    hashes: list[str]
    #: What is wrong with the file itself, except unsigned lines (listed apart).
    damage: list[str]
    #: Line numbers without a signature.
    unsigned: list[int]

    @property
    def head(self) -> LedgerHead:
        return LedgerHead(len(self.hashes), self.hashes[-1] if self.hashes else GENESIS)

    @property
    def problems(self) -> list[str]:
        if not self.unsigned:
            return self.damage
        return [f"{_lines(self.unsigned)} unsigned (a ledger written before fedcare signed "
                "its entries, or one whose signatures were stripped): they cannot be told "
                "from a rewrite, so the site refuses to charge. Check the entries against "
                "the hub's records, then have them signed with `fedcare node privacy "
                "--sign-unsigned`", *self.damage]


def _line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def anchor_problems(hashes: list[str], anchor: LedgerHead | None) -> list[str]:
    """Why a ledger whose lines hash to ``hashes`` does not extend ``anchor`` (the head the
    hub acknowledged): empty when it does."""
    if anchor is None or anchor.count == 0:
        return []
    if len(hashes) < anchor.count:
        return [f"the ledger holds {len(hashes)} entries but the hub acknowledged "
                f"{anchor.count} (head {str(anchor)[:20]}...): entries were removed from its "
                "end, or the file was deleted or replaced. The site refuses to charge until "
                "its steward restores the ledger (e.g. from a backup)"]
    if hashes[anchor.count - 1] != anchor.hash:
        return [f"entry {anchor.count} is not the one the hub acknowledged (hash "
                f"{hashes[anchor.count - 1][:12]}..., acknowledged {anchor.hash[:12]}...): the "
                "ledger was rewritten or replaced. The site refuses to charge until its "
                "steward restores the ledger (e.g. from a backup)"]
    return []


def _epsilon(entries: list[LedgerEntry], policy: SitePrivacyPolicy) -> float:
    """Compose every DP entry (grouped by noise and sample rate) with the policy's accountant."""
    steps: dict[tuple[float, float], int] = {}
    for e in entries:
        if e.mechanism is not Mechanism.NONE:
            key = (e.noise_multiplier, e.sample_rate)
            steps[key] = steps.get(key, 0) + e.steps
    events = [sampled_gaussian_event(z, q, n) for (z, q), n in steps.items()]
    return epsilon_of(events, policy.delta, policy.accountant)


class PrivacyLedger:
    """The append-only ledger at ``path`` under ``policy`` (see the module docstring).

    ``key`` signs new entries and verifies all of them. ``anchor`` is the last head the hub
    acknowledged (None: none known yet); the node raises it as the hub acknowledges more.
    """

    def __init__(self, path: Path, policy: SitePrivacyPolicy, *, key: LedgerKey,
                 anchor: LedgerHead | None = None) -> None:
        if not isinstance(policy, SitePrivacyPolicy):
            raise ConfigError("a privacy ledger needs a SitePrivacyPolicy (fail closed)")
        if not isinstance(key, LedgerKey):
            raise ConfigError("a privacy ledger needs the site's LedgerKey to sign and "
                              "verify its entries (fail closed)")
        self.path = Path(path)
        self.policy = policy
        self.key = key
        self.anchor = anchor
        self._lock = threading.Lock()
        self._verified: set[bytes] = set()

    # ------------------------------------------------------------------------------ reading
    def _read(self) -> _Read:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return _Read([], [], [], [])
        except OSError as exc:
            raise LedgerError(f"cannot read privacy ledger {self.path}: {exc}") from exc
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline, as every append does
        entries, problems, hashes, prev = [], [], [], GENESIS
        unsigned = []
        for number, line in enumerate(lines, start=1):
            try:
                doc = json.loads(line)
                if not isinstance(doc, dict):
                    raise ValueError("not an object")
                signature = doc.pop("sig", None)
                if signature is None:
                    unsigned.append(number)
                elif not self._signed_by_site(line, doc, signature):
                    problems.append(f"line {number}: signature does not verify with the site "
                                    "certificate's key (entry edited, or written without the "
                                    "site's key)")
                if doc.pop("prev", None) != prev:
                    problems.append(f"line {number}: hash chain broken (line edited, removed "
                                    "or inserted before it)")
                doc.pop("epsilon_total", None)
                entries.append(LedgerEntry.from_json(doc))
            except (ValueError, TypeError, ConfigError) as exc:
                problems.append(f"line {number}: not a valid ledger entry ({exc})")
            prev = _line_hash(line)
            hashes.append(prev)
        if tail:
            problems.append(f"line {len(lines) + 1}: torn last line ({len(tail)} bytes without "
                            "a newline; an append was interrupted) - the steward must inspect "
                            "it before the site charges again")
        return _Read(entries, hashes, problems, unsigned)

    def _signed_by_site(self, line: bytes, doc: dict[str, Any], signature: object) -> bool:
        """Whether ``doc`` (the line without its ``sig``) carries the site's signature.
        Lines already verified are remembered by their bytes' hash: the ledger is read again
        before every charge and every reply, and one ECDSA check costs ~0.1 ms a line."""
        digest = hashlib.sha256(line).digest()
        if digest in self._verified:
            return True
        if not self.key.verifies(_canonical(doc), signature):
            return False
        self._verified.add(digest)
        return True

    def entries(self) -> list[LedgerEntry]:
        """The readable entries (see :meth:`verify` for problems)."""
        return self._read().entries

    def head(self) -> LedgerHead:
        """The ledger's head now, whatever its state."""
        return self._read().head

    def verified_head(self) -> LedgerHead | None:
        """The head to report to the hub: None while the file itself fails its checks (a
        broken chain, a bad or missing signature, a torn line), so that no damaged ledger is
        ever anchored. A ledger that is merely short (cut, deleted) reports its head: the
        hub, which keeps the longest head it acknowledged, answers with that one."""
        state = self._read()
        return None if state.problems else state.head

    def verify(self, anchor: LedgerHead | None = None) -> list[str]:
        """Problems with the file: broken hash chain, a bad or missing signature, unreadable
        lines, a torn last line, and a ledger that does not extend ``anchor`` (default: the
        ledger's own :attr:`anchor`) - cut at its end, deleted or replaced."""
        state = self._read()
        return state.problems + anchor_problems(state.hashes, anchor or self.anchor)

    def spent(self, exclude: Collection[str] = ()) -> Spent:
        """Epsilon of all readable DP entries at the policy's delta; ``exclude``: study ids
        whose entries are left out (a site policy counts a running study at the epsilon it
        asked, not at what it has spent so far)."""
        entries = [e for e in self._read().entries if e.study not in exclude]
        dp = sum(e.mechanism is not Mechanism.NONE for e in entries)
        return Spent(_epsilon(entries, self.policy), self.policy.delta, dp, len(entries) - dp)

    # ----------------------------------------------------------------------------- charging
    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One charger at a time, across threads and (POSIX) processes."""
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path.with_name(self.path.name + ".lock"),
                         os.O_CREAT | os.O_RDWR, PRIVATE_FILE_MODE)
            try:
                try:
                    import fcntl
                except ImportError:  # pragma: no cover - Windows: threads only
                    yield
                else:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    yield
            finally:
                os.close(fd)

    def charge(self, entry: LedgerEntry) -> float:
        """Validate, check the budget, then append ``entry``; returns the cumulative epsilon.

        Refuses (nothing written) with :class:`PrivacyBudgetError` past ``max_epsilon``, for a
        non-DP task under ``require_dp``, for a study delta above the site's, or for a DP task
        the ledger already holds (the same study and task id; a non-DP one is recorded once
        and not again); with
        :class:`LedgerError` if the ledger fails :meth:`verify`.
        """
        if not isinstance(entry, LedgerEntry):
            raise ConfigError("charge() takes a LedgerEntry")
        problems = entry.problems()
        if problems:
            raise ConfigError(problems)
        policy = self.policy
        if entry.mechanism is Mechanism.NONE and policy.require_dp:
            raise PrivacyBudgetError(f"task {entry.task_id} uses no differential privacy and "
                                     "this site's policy requires DP (require_dp = true)")
        if entry.mechanism is not Mechanism.NONE and entry.delta > policy.delta:
            raise PrivacyBudgetError(f"task {entry.task_id} asks delta {entry.delta:g}, above "
                                     f"this site's delta {policy.delta:g}")
        with self._exclusive():
            state = self._read()
            problems = state.problems + anchor_problems(state.hashes, self.anchor)
            if problems:
                raise LedgerError(f"privacy ledger {self.path} fails verification, refusing to "
                                  "charge: " + "; ".join(problems))
            before = _epsilon(state.entries, policy)
            same = [e for e in state.entries
                    if e.study == entry.study and e.task_id == entry.task_id]
            if same:
                # A task touches the data once. Asked again (a hub restarted mid-round), the
                # site answers with what it computed; if it lost that (it restarted too),
                # training again would spend the budget twice on one task: refused.
                if entry.mechanism is Mechanism.NONE and all(
                        e.mechanism is Mechanism.NONE for e in same):
                    return before  # recorded already; nothing to add
                raise PrivacyBudgetError(
                    f"task {entry.task_id} was already charged ({same[0].time}); this site "
                    "spends privacy budget on a task once and no longer holds its result "
                    "(was the node restarted?), so it sits this round out")
            after = _epsilon([*state.entries, entry], policy)
            if not after <= policy.max_epsilon:  # also refuses NaN
                raise PrivacyBudgetError(
                    f"privacy budget exceeded: spent epsilon {before:.4g}, task "
                    f"{entry.task_id} would bring it to {after:.4g} (limit {policy.max_epsilon:g}"
                    f" at delta {policy.delta:g}); the site refuses this task")
            record = {**entry.to_json(), "epsilon_total": after if math.isfinite(after)
                      else "inf", "prev": state.head.hash}
            record["sig"] = self.key.sign(_canonical(record))
            self._append(_canonical(record))
        return after

    def _append(self, line: bytes) -> None:
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE_MODE)
        try:
            data = line + b"\n"
            written = os.write(fd, data)
            if written != len(data):  # pragma: no cover - regular files write fully
                raise LedgerError(f"short write to {self.path}: {written} of {len(data)} bytes")
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_dir(self.path.parent)

    def sign_unsigned(self) -> int:
        """Sign a ledger written before fedcare signed its entries; returns how many lines
        were unsigned (0: nothing to do, the file is left as it is).

        The steward vouches for the entries by doing this (the command that calls it says
        so): an unsigned line cannot be told from a rewrite. Refused when the file has any
        other problem (broken chain, bad signature, torn line) or does not extend the hub's
        acknowledged head. Every line is re-signed with its chain recomputed (signing a line
        changes its bytes, so the next ``prev``), and the file is replaced atomically.
        """
        with self._exclusive():
            state = self._read()
            if not state.unsigned:
                return 0
            problems = state.damage + anchor_problems(state.hashes, self.anchor)
            if problems:
                raise LedgerError(f"privacy ledger {self.path} has other problems; not signing "
                                  "it: " + "; ".join(problems))
            out, prev = [], GENESIS
            for line in self.path.read_bytes().split(b"\n")[:-1]:
                doc = json.loads(line)
                doc.pop("sig", None)
                doc["prev"] = prev
                doc["sig"] = self.key.sign(_canonical(doc))
                signed = _canonical(doc)
                out.append(signed + b"\n")
                prev = _line_hash(signed)
            atomic_write(self.path, b"".join(out), mode=PRIVATE_FILE_MODE)
        return len(state.unsigned)


def _lines(numbers: list[int]) -> str:
    """``line 3`` / ``lines 1-4`` / ``lines 1, 3, 5`` (a sorted list)."""
    if len(numbers) == 1:
        return f"line {numbers[0]} is"
    if numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"lines {numbers[0]}-{numbers[-1]} are"
    shown = ", ".join(map(str, numbers[:10])) + (", ..." if len(numbers) > 10 else "")
    return f"lines {shown} are"
