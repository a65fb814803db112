"""A site's own privacy ledger: append-only, hash-chained, checked before every task.

The site, not the hub, decides how much privacy its data may spend (NVFlare-style site-owned
policy, deny by default). Each task that touches data is *charged* before it runs:
:meth:`PrivacyLedger.charge` validates the entry, composes every DP event already in the
ledger plus this one with a real accountant (``dp-accounting``), refuses with
:class:`PrivacyBudgetError` past the site's ``max_epsilon``, and only then appends one
JSON line (write + flush + fsync of an ``O_APPEND`` file; the file is never rewritten).

Tamper evidence: every line carries ``prev``, the SHA-256 of the previous line's bytes (64
zeros for the first), so editing or deleting a line breaks the chain at the next one
(:meth:`PrivacyLedger.verify`). A torn last line (power cut during an append) is reported,
never silently dropped; while the ledger has any problem, charging refuses (fail closed) and
the site steward must look at the file.

Privacy units: DP-SGD entries are record-level; DP-FedAvg entries are site-level (the whole
site's contribution added or removed), charged at sample rate 1 per participated round because
amplification by sampling does not hold against the hub that picked the sample. Non-DP tasks
(``mechanism = "none"``) are recorded; with ``require_dp = true`` they are refused, otherwise
they void the formal guarantee, which :meth:`PrivacyLedger.spent` reports (``non_dp_tasks``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import math
import os
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedcare.core.errors import ConfigError
from fedcare.core.files import PRIVATE_FILE_MODE, fsync_dir
from fedcare.privacy.dp.accounting import epsilon_of, sampled_gaussian_event
from fedcare.privacy.dp.errors import LedgerError, PrivacyBudgetError
from fedcare.privacy.dp.spec import Accountant, Mechanism, check_finite_number, parse_enum

GENESIS = "0" * 64
_POLICY_KEYS = {"max_epsilon", "delta", "accountant", "require_dp", "trust_hub_noise"}


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
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot parse {path.name}: {exc}", source=str(path)) from exc
        problems = [f"unknown key '{k}' (valid: {', '.join(sorted(_POLICY_KEYS))})"
                    for k in sorted(set(doc) - _POLICY_KEYS)]
        problems += [f"missing key '{k}'" for k in ("max_epsilon", "delta") if k not in doc]
        if problems:
            raise ConfigError(problems, source=str(path))
        try:
            return cls(max_epsilon=doc["max_epsilon"], delta=doc["delta"],
                       accountant=doc.get("accountant", "pld"),
                       require_dp=doc.get("require_dp", False),
                       trust_hub_noise=doc.get("trust_hub_noise", False))
        except ConfigError as exc:
            raise ConfigError(exc.problems, source=str(path)) from None


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


@dataclass
class _Read:
    entries: list[LedgerEntry]
    last_hash: str
    problems: list[str]


def _line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


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
    """The append-only ledger at ``path`` under ``policy`` (see the module docstring)."""

    def __init__(self, path: Path, policy: SitePrivacyPolicy) -> None:
        if not isinstance(policy, SitePrivacyPolicy):
            raise ConfigError("a privacy ledger needs a SitePrivacyPolicy (fail closed)")
        self.path = Path(path)
        self.policy = policy
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------ reading
    def _read(self) -> _Read:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return _Read([], GENESIS, [])
        except OSError as exc:
            raise LedgerError(f"cannot read privacy ledger {self.path}: {exc}") from exc
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline, as every append does
        entries, problems, prev = [], [], GENESIS
        for number, line in enumerate(lines, start=1):
            try:
                doc = json.loads(line)
                if not isinstance(doc, dict):
                    raise ValueError("not an object")
                if doc.pop("prev", None) != prev:
                    problems.append(f"line {number}: hash chain broken (line edited, removed "
                                    "or inserted before it)")
                doc.pop("epsilon_total", None)
                entries.append(LedgerEntry.from_json(doc))
            except (ValueError, TypeError, ConfigError) as exc:
                problems.append(f"line {number}: not a valid ledger entry ({exc})")
            prev = _line_hash(line)
        if tail:
            problems.append(f"line {len(lines) + 1}: torn last line ({len(tail)} bytes without "
                            "a newline; an append was interrupted) - the steward must inspect "
                            "it before the site charges again")
        return _Read(entries, prev, problems)

    def entries(self) -> list[LedgerEntry]:
        """The readable entries (see :meth:`verify` for problems)."""
        return self._read().entries

    def verify(self) -> list[str]:
        """Problems with the file: broken hash chain, unreadable lines, a torn last line."""
        return self._read().problems

    def spent(self) -> Spent:
        """Epsilon of all readable DP entries at the policy's delta."""
        entries = self._read().entries
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
            if state.problems:
                raise LedgerError(f"privacy ledger {self.path} fails verification, refusing to "
                                  "charge: " + "; ".join(state.problems))
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
                      else "inf", "prev": state.last_hash}
            self._append(json.dumps(record, sort_keys=True, separators=(",", ":")).encode())
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
