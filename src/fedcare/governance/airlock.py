"""The output airlock's rules, without I/O: what an export request's automatic checks find,
and the request's state machine (issue 13, point 7).

Nothing a study produced leaves the federation (a model file, a results table, a report)
without an export request. The hub (``fedcare.hub.airlock``) stores requests and serves the
bytes; this module decides, so the rules are tested without a network or a database::

    requested ──checks──► refused_by_checks                       (final)
                    └───► awaiting_stewards ──any reject──► rejected   (final)
                                  └──quorum of approvals──► approved ──download──► downloaded

Fail-closed throughout: an artifact whose kind is unknown is refused; a table cell that
cannot be read as a number is not a count, but every *integer* cell is one unless its key is
known not to count people (:data:`NOT_COUNTS`); a decision from a site that is not part of
the study, a second decision by a site, or any decision after the request is decided is
refused; nothing but ``approved`` (or ``downloaded``) may be downloaded.

Small cells (statistical disclosure control): a published count ``0 < n < min_cell`` can
identify a person (Hundepool et al., *Statistical Disclosure Control*, Wiley 2012, ch. 5;
the NHS and CPRD "small numbers" rule uses 10). Zeros are not small cells (an empty cell
reveals nobody). The threshold is the *strictest* of the participating sites' thresholds as
the hub knows them, never below :data:`DEFAULT_MIN_CELL` (:func:`strictest_min_cell`).
"""

from __future__ import annotations

import csv
import enum
import io
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from fedcare.core.errors import FedcareError, ProtocolError

#: The smallest count a released table may show (when no site asks for more).
DEFAULT_MIN_CELL = 10
#: A site may ask for a threshold up to this (a larger one is a misconfiguration).
MAX_MIN_CELL = 1_000_000
#: Findings listed per refusal (the rest are counted).
MAX_LISTED = 5
#: Largest artifact the checks read (bytes): a study's tables and reports are far smaller.
MAX_CHECKED_BYTES = 256 * 1024 * 1024

#: JSON keys whose integer values are settings or bookkeeping, not counts of people; their
#: whole subtree is skipped for ``config`` (the study's settings, which every site approved by
#: their content hash). Any other integer in a JSON table is a count cell.
NOT_COUNTS = frozenset({
    "round", "rounds", "rounds_planned", "current_round", "seed", "epoch", "epochs", "step",
    "steps", "version", "v", "year", "index", "bytes", "bytes_up", "bytes_down", "parameters",
    "classes", "min_cell", "time", "seconds", "port"})
SKIPPED_SUBTREES = frozenset({"config"})


class ExportStatus(enum.StrEnum):
    REFUSED = "refused_by_checks"
    AWAITING = "awaiting_stewards"
    APPROVED = "approved"
    REJECTED = "rejected"
    DOWNLOADED = "downloaded"


#: States after which no decision changes anything (a refused or rejected export never
#: becomes downloadable; an approved one is never un-approved).
DECIDED = frozenset({ExportStatus.REFUSED, ExportStatus.REJECTED, ExportStatus.APPROVED,
                     ExportStatus.DOWNLOADED})
RELEASED = frozenset({ExportStatus.APPROVED, ExportStatus.DOWNLOADED})


class ArtifactKind(enum.StrEnum):
    MODEL = "model"
    TABLE = "table"
    REPORT = "report"


class AirlockError(FedcareError):
    """Root of the airlock's refusals."""


class ExportConflict(AirlockError, ProtocolError):
    """The request is not in a state that allows this (already decided, not approved yet,
    this site decided already): 409."""


class ExportForbidden(AirlockError):
    """This person may not do this to this request (not a participating site's steward, not
    the requester): 403."""


def artifact_kind(name: str) -> ArtifactKind:
    """The kind of a study's file by its name; an unknown one is refused (fail closed)."""
    if name in ("model.safetensors", "model.xgb.json"):
        return ArtifactKind.MODEL
    if name.endswith(".html"):
        return ArtifactKind.REPORT
    if name.endswith((".json", ".csv")):
        return ArtifactKind.TABLE
    raise AirlockError(f"{name!r} is not a kind of file the airlock can check (a model "
                       "file, a .csv or .json table, or an .html report)")


def strictest_min_cell(thresholds: Iterable[object]) -> int:
    """The small-cell threshold an export must meet: the largest of the sites' thresholds
    (values that are not positive integers up to :data:`MAX_MIN_CELL` are ignored: a site's
    report is its own input), never below :data:`DEFAULT_MIN_CELL`."""
    known = [t for t in thresholds if isinstance(t, int) and not isinstance(t, bool)
             and 1 <= t <= MAX_MIN_CELL]
    return max([DEFAULT_MIN_CELL, *known])


@dataclass(frozen=True)
class SmallCell:
    """Where a small count sits (never its value: the refusal goes to the requester)."""

    where: str

    def __str__(self) -> str:
        return self.where


def _is_small(value: int, min_cell: int) -> bool:
    return 0 < value < min_cell


def small_cells_json(doc: Any, min_cell: int) -> list[SmallCell]:
    """Every integer count ``0 < n < min_cell`` of a JSON document, by its path. Integers
    under a key of :data:`NOT_COUNTS` and the :data:`SKIPPED_SUBTREES` are not counts;
    booleans and floats (metrics, rates) are not counts. Walks without recursion (the
    document may be deep)."""
    found: list[SmallCell] = []
    stack: list[tuple[Any, str, str | None]] = [(doc, "$", None)]
    while stack:
        value, path, key = stack.pop()
        if isinstance(value, dict):
            stack.extend((v, f"{path}.{k}", str(k)) for k, v in reversed(value.items())
                         if str(k) not in SKIPPED_SUBTREES)
        elif isinstance(value, list):
            stack.extend((v, f"{path}[{i}]", key) for i, v in reversed(list(enumerate(value))))
        elif (isinstance(value, int) and not isinstance(value, bool)
              and (key is None or key.lower() not in NOT_COUNTS)
              and _is_small(value, min_cell)):
            found.append(SmallCell(path))
    return found


_INTEGER = re.compile(r"^\s*[+-]?\d+\s*$")


def small_cells_csv(text: str, min_cell: int) -> list[SmallCell]:
    """Every integer cell ``0 < n < min_cell`` of a CSV table (the first row is its header,
    named in the finding). Any integer cell is a count: label columns should hold words."""
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None) or []
    found = []
    for r, row in enumerate(rows, start=2):
        for c, cell in enumerate(row):
            if _INTEGER.match(cell) and _is_small(int(cell), min_cell):
                column = header[c] if c < len(header) and header[c] else f"column {c + 1}"
                found.append(SmallCell(f"row {r}, {column!r}"))
    return found


def small_cells(name: str, data: bytes, min_cell: int) -> list[SmallCell]:
    """The small cells of a table artifact (``.json`` or ``.csv``). A table that cannot be
    read is refused, not passed."""
    if len(data) > MAX_CHECKED_BYTES:
        raise AirlockError(f"{name} is larger than the airlock reads ({MAX_CHECKED_BYTES} B)")
    try:
        text = data.decode("utf-8")
        if name.endswith(".csv"):
            return small_cells_csv(text, min_cell)
        return small_cells_json(json.loads(text), min_cell)
    except (UnicodeDecodeError, ValueError, csv.Error) as exc:
        raise AirlockError(f"{name} cannot be read as a table, so it cannot be checked for "
                           f"small cells: {exc}") from exc


@dataclass(frozen=True)
class CheckResult:
    """What the automatic checks found: ``refusals`` stop the export (nobody can approve
    it); ``flags`` go to the stewards with the request."""

    kind: ArtifactKind
    min_cell: int
    refusals: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()

    @property
    def refused(self) -> bool:
        return bool(self.refusals)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "min_cell": self.min_cell,
                "refusals": list(self.refusals), "flags": list(self.flags)}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> CheckResult:
        return cls(ArtifactKind(doc["kind"]), int(doc["min_cell"]),
                   tuple(doc.get("refusals", ())), tuple(doc.get("flags", ())))


def _cells_refusal(what: str, cells: list[SmallCell], min_cell: int) -> str:
    listed = ", ".join(map(str, cells[:MAX_LISTED]))
    more = f" and {len(cells) - MAX_LISTED} more" if len(cells) > MAX_LISTED else ""
    return (f"{what} has {len(cells)} count(s) between 1 and {min_cell - 1}, below the "
            f"sites' small-cell threshold {min_cell}: {listed}{more}; suppress or merge them "
            "and request again")


def run_checks(name: str, data: bytes, *, min_cell: int, dp: bool,
               source: tuple[str, bytes] | None = None) -> CheckResult:
    """The automatic checks of one artifact.

    * a table (``.csv``, ``.json``): refused when a count cell is small;
    * a model file: flagged when the study trained without differential privacy (a model can
      memorise its training records; Carlini et al. 2021, Shokri et al. 2017);
    * a report (``.html``): its figures cannot be read back, so the table it was rendered
      from (``source``: name and bytes, the study's ``history.json``) is checked instead, and
      the report is flagged for the stewards to read.
    """
    kind = artifact_kind(name)
    if not 1 <= min_cell <= MAX_MIN_CELL:
        raise AirlockError(f"small-cell threshold {min_cell} out of range 1..{MAX_MIN_CELL}")
    refusals: list[str] = []
    flags: list[str] = []
    try:
        if kind is ArtifactKind.TABLE:
            cells = small_cells(name, data, min_cell)
            if cells:
                refusals.append(_cells_refusal(name, cells, min_cell))
        elif kind is ArtifactKind.REPORT:
            flags.append(f"{name} is a rendered report: its text and figures are not checked "
                         "automatically; read it before approving")
            if source is None:
                refusals.append(f"the table {name} was rendered from is missing, so its "
                                "counts cannot be checked")
            else:
                cells = small_cells(source[0], source[1], min_cell)
                if cells:
                    refusals.append(_cells_refusal(f"{source[0]} (what {name} shows)", cells,
                                                   min_cell))
    except AirlockError as exc:
        refusals.append(exc.message)
    if kind is ArtifactKind.MODEL and not dp:
        flags.append("the model was trained without differential privacy: it may memorise "
                     "and reveal training records (membership inference)")
    return CheckResult(kind, min_cell, tuple(refusals), tuple(flags))


# -- the state machine --------------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    """One site steward's decision on one export request."""

    site: str
    user: str
    approve: bool
    reason: str
    at: datetime


@dataclass(frozen=True)
class ExportState:
    """An export request as the rules see it: its status, the study's participating sites,
    how many approvals release it, and the decisions so far (at most one per site)."""

    status: ExportStatus
    sites: tuple[str, ...]
    quorum: int
    decisions: tuple[Decision, ...] = ()

    def decided_sites(self) -> set[str]:
        return {d.site for d in self.decisions}

    def approvals(self) -> int:
        return sum(d.approve for d in self.decisions)

    def missing(self) -> str:
        """What the request still lacks before it can be downloaded (for a 409's detail)."""
        if self.status is ExportStatus.REFUSED:
            return "the automatic checks refused it; no approval can release it"
        if self.status is ExportStatus.REJECTED:
            who = ", ".join(d.site for d in self.decisions if not d.approve)
            return f"rejected by the steward(s) of {who}; it can never be downloaded"
        if self.status is ExportStatus.AWAITING:
            waiting = sorted(set(self.sites) - self.decided_sites())
            return (f"{self.approvals()} of {self.quorum} steward approvals so far (waiting "
                    f"for {', '.join(waiting)})")
        return ""


def quorum_of(configured: int | None, sites: Iterable[str]) -> int:
    """Approvals needed: ``configured`` (a study's ``airlock.quorum``, which every site
    approved as part of its content hash), at most the number of sites; default all."""
    n = len(set(sites))
    if n == 0:
        raise AirlockError("a study without participating sites has no stewards to approve "
                           "its exports")
    return n if configured is None else max(1, min(configured, n))


def opened(check: CheckResult, sites: Iterable[str], quorum: int) -> ExportState:
    """A new request's state once its checks ran."""
    status = ExportStatus.REFUSED if check.refused else ExportStatus.AWAITING
    return ExportState(status, tuple(sorted(set(sites))), quorum)


def decide(state: ExportState, decision: Decision) -> ExportState:
    """The state after ``decision``: refused unless the request awaits stewards, the site
    takes part in the study and has not decided yet. Any rejection rejects; the quorum-th
    approval approves."""
    if decision.site not in state.sites:
        raise ExportForbidden(f"site {decision.site} does not take part in this study; only "
                              f"the stewards of {', '.join(state.sites)} decide its exports")
    if state.status is not ExportStatus.AWAITING:
        raise ExportConflict(f"the export is {state.status.value}; decisions are final")
    if decision.site in state.decided_sites():
        raise ExportConflict(f"site {decision.site} has decided on this export already "
                             "(one decision per site, final)")
    if not decision.reason.strip() and not decision.approve:
        raise AirlockError("a rejection needs a reason (--why) for the requester")
    decisions = (*state.decisions, decision)
    status: ExportStatus = ExportStatus.AWAITING
    if not decision.approve:
        status = ExportStatus.REJECTED
    elif sum(d.approve for d in decisions) >= state.quorum:
        status = ExportStatus.APPROVED
    return replace(state, status=status, decisions=decisions)


def downloadable(state: ExportState) -> None:
    """Raise :class:`ExportConflict` naming what is missing unless the request is
    released."""
    if state.status not in RELEASED:
        raise ExportConflict(f"the export cannot be downloaded: {state.missing()}")
