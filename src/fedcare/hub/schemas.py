"""What the hub's JSON endpoints answer: one pydantic model per response (architecture review
P8).

The API declares them (``response_model=``), so FastAPI checks every document the service
returns against them and sends only the declared fields, and the OpenAPI description (off by
default, ``fedcare hub start --api-docs``) documents them. The researcher's
:class:`fedcare.client.HubClient` parses the hub's answers into the same models, so the CLI,
the demo and a notebook read attributes, not string keys.

This module imports nothing of fedcare: it is the wire contract, shared by the hub (which
writes it) and the researcher's client (which reads it). Parsing ignores fields it does not
know, so an older client can talk to a newer hub; tests check the service writes exactly
these fields (``extra="forbid"``).

Node-supplied documents that have their own schema elsewhere (a site's quality report, the
hub's comparison of them) stay JSON objects here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: A study's lifecycle state (the hub store's ``StudyStatus``).
StudyState = Literal["pending", "running", "completed", "failed", "cancelled", "paused",
                     "pending_approval", "rejected", "expired"]
#: What a site said about a study (``fedcare.governance.approvals.Decision``).
DecisionName = Literal["approved", "rejected", "revoked", "refused"]


class Response(BaseModel):
    """Base of every response: frozen, unknown fields ignored (a newer hub may say more)."""

    model_config = ConfigDict(frozen=True)


# -- errors ---------------------------------------------------------------------------------
class ErrorBody(Response):
    """Every 4xx/5xx: ``detail`` says what was wrong. ``error`` is the fedcare exception's
    class name when a fedcare error caused it; a request that does not match the API's own
    models gets FastAPI's list of problems as ``detail``."""

    detail: str | list[Any]
    error: str | None = None


# -- node endpoints -------------------------------------------------------------------------
class HelloAck(Response):
    """``POST /v1/node/hello``: who the hub saw and the privacy-ledger head it holds for the
    site (None: none yet), which the node keeps as its ledger's anchor."""

    site: str
    hub_version: str
    ledger_head: str | None


class LedgerHeadAck(Response):
    """``GET /v1/node/ledger-head``: the ledger head the hub holds for the calling site."""

    site: str
    ledger_head: str | None


class NodeStudy(Response):
    """``GET /v1/node/studies/{id}``: the study a site is asked to take part in, as submitted
    (the node checks ``config_hash`` against the config before approving anything)."""

    study_id: str
    config: dict[str, Any]
    config_hash: str
    sites: list[str]


class PendingStudy(Response):
    """One entry of ``GET /v1/node/pending``: a study waiting for the calling site's
    decision (the node recomputes its content hash from ``config``)."""

    study_id: str
    name: str
    config: dict[str, Any]
    config_hash: str
    sites: list[str]
    deadline: str


class DecisionRecorded(Response):
    """``POST /v1/node/decisions``: what the hub recorded."""

    study_id: str
    site: str
    decision: DecisionName


class ReplyAccepted(Response):
    """``POST /v1/node/reply`` (202): the reply was validated and recorded."""

    accepted: bool
    ledger_head: str | None


class SiteKeyCert(Response):
    """One site's entry in ``GET /v1/node/keys/{id}/certs`` (CKKS key relay)."""

    cert: str = Field(description="the site's certificate, base64 DER")
    sealed: bool = Field(description="whether a sealed study key already waits for it")


# -- researcher endpoints -------------------------------------------------------------------
class Submitted(Response):
    """``POST /v1/studies`` (201): the new study, its content hash and its sites."""

    study_id: str
    config_hash: str
    sites: list[str]
    #: ``pending_approval``: it starts once every site approved its content hash.
    status: StudyState = "pending_approval"


class SiteApproval(Response):
    """A site's latest decision on a study, as ``fedcare study status`` shows it."""

    site: str
    decision: DecisionName
    reason: str | None
    time: str


class RoundRecord(Response):
    """One completed round (the engine's ``RoundRecord``): ``site_metrics`` and
    ``global_metrics`` evaluate the model this round produced."""

    round: int
    seconds: float = 0.0
    train_seconds: float = 0.0
    aggregate_seconds: float = 0.0
    bytes_down: int = 0
    bytes_up: int = 0
    sites_sampled: list[str] = []
    sites_completed: list[str] = []
    sites_failed: dict[str, str] = {}
    sites_flagged: dict[str, str] = {}
    train_metrics: dict[str, dict[str, float]] = {}
    site_metrics: dict[str, dict[str, float]] = {}
    global_metrics: dict[str, float] = {}
    #: Cumulative epsilon after this round (None without DP; "inf" after a round without noise).
    epsilon: float | str | None = None

    def metric(self, site: str | None, name: str) -> float | None:
        """A site's metric this round, or the federation's (``site=None``)."""
        metrics = self.global_metrics if site is None else self.site_metrics.get(site, {})
        return metrics.get(name)


class StudySummary(Response):
    """One entry of ``GET /v1/studies``."""

    study_id: str
    name: str
    status: StudyState
    current_round: int
    rounds_planned: int
    created: str
    #: The user who submitted it (None: submitted before the hub had users).
    owner: str | None = None
    sites: list[str] = []


class StudyStatus(Response):
    """``GET /v1/studies/{id}``: the study's state and its rounds' records (``?rounds=N``:
    the last N only)."""

    study_id: str
    name: str
    status: StudyState
    created: str
    primary_metric: str
    higher_is_better: bool
    rounds_planned: int
    current_round: int
    sites: list[str]
    config_hash: str
    error: str | None
    rounds: list[RoundRecord]
    owner: str | None = None
    #: Each site's decision so far; the study's sites without one have not decided.
    approvals: list[SiteApproval] = []

    def undecided(self) -> list[str]:
        """The sites that have not decided yet."""
        decided = {a.site for a in self.approvals}
        return [s for s in self.sites if s not in decided]


class Resumed(Response):
    """``POST /v1/studies/{id}/resume``: running again after round ``resumed_after_round``."""

    study_id: str
    status: StudyState
    resumed_after_round: int


class Event(Response):
    """One entry of a study's event log (``GET /v1/studies/{id}/events``)."""

    at: str
    kind: str
    site: str | None
    message: str


class DeclaredDataset(Response):
    """A dataset a site's node declared in its hello."""

    name: str
    rows: int
    contract_hash: str | None = None
    quality: dict[str, Any] | None = None
    # SHA-256 of the site's dataset as the node read it: the registry's lineage for a release.
    digest: str | None = None


class SiteInfo(Response):
    """One entry of ``GET /v1/sites``: ``online`` when its node polled within the last
    minute."""

    name: str
    last_seen: str
    online: bool
    version: str | None
    datasets: list[DeclaredDataset]

    @field_validator("datasets", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return [] if value is None else value


class DatasetQuality(Response):
    """``GET /v1/datasets/{name}/quality``: every site's quality report for the dataset, the
    hub's comparison of them (None with fewer than two usable reports) and the sites that
    will refuse to train, with why."""

    dataset: str
    reports: dict[str, dict[str, Any]]
    comparison: dict[str, Any] | None
    refusing: dict[str, Any]

    @property
    def findings(self) -> list[dict[str, Any]]:
        """The comparison's findings (shift, label rate, coverage, units), each with a
        ``kind`` and a ``message``."""
        return list((self.comparison or {}).get("findings", []))


class Health(Response):
    """``GET /v1/health``."""

    status: Literal["ok"]
    version: str


# -- model registry ---------------------------------------------------------------------------
class ModelSummary(Response):
    """One released model in ``GET /v1/models`` (the whole entry: ``GET /v1/models/{id}``)."""

    id: str
    study: str
    study_id: str | None = None
    study_hash: str
    created: str
    model: str
    strategy: str
    rounds: int
    primary_metric: str
    score: float | None = None
    privacy: str
    sites: list[str]


# -- the output airlock -----------------------------------------------------------------------
#: An export request's state (``fedcare.governance.airlock.ExportStatus``).
ExportState = Literal["refused_by_checks", "awaiting_stewards", "approved", "rejected",
                      "downloaded"]


class ExportDecisionInfo(Response):
    """One site steward's decision on an export request."""

    site: str
    user: str
    approve: bool
    reason: str
    at: str


class ExportInfo(Response):
    """An export request (``POST /v1/studies/{id}/exports``, ``GET /v1/exports...``):
    what the automatic checks found (``refusals`` stop it; ``flags`` are for the stewards),
    the decisions so far, and ``missing``: what it still lacks before it can be downloaded
    (None once released)."""

    id: str
    study_id: str
    artifact: str
    requester: str
    reason: str
    created: str
    digest: str
    bytes: int
    kind: Literal["model", "table", "report"]
    min_cell: int
    refusals: list[str]
    flags: list[str]
    status: ExportState
    sites: list[str]
    quorum: int
    approvals: int
    decisions: list[ExportDecisionInfo]
    missing: str | None = None


# -- people ---------------------------------------------------------------------------------
#: A hub user's role (the hub's ``fedcare.hub.auth.Role``).
RoleName = Literal["admin", "researcher", "steward", "auditor"]


class NewUserRequest(BaseModel):
    """``POST /v1/users``: a new user (stewards name their site; nobody else has one)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1, max_length=64)
    role: RoleName
    site: str | None = Field(None, min_length=1, max_length=128)


class UserSummary(Response):
    """One user of ``GET /v1/users`` (never a token or its hash)."""

    name: str
    role: RoleName
    site: str | None
    created: str
    revoked: str | None


class UserCreated(UserSummary):
    """``POST /v1/users``: the new user and their token, shown this once and stored nowhere
    (the hub keeps only its argon2 hash)."""

    token: str


__all__ = [
    "DatasetQuality",
    "DecisionName",
    "DecisionRecorded",
    "DeclaredDataset",
    "ErrorBody",
    "Event",
    "ExportDecisionInfo",
    "ExportInfo",
    "ExportState",
    "Health",
    "HelloAck",
    "LedgerHeadAck",
    "ModelSummary",
    "NewUserRequest",
    "NodeStudy",
    "PendingStudy",
    "ReplyAccepted",
    "Response",
    "Resumed",
    "RoleName",
    "RoundRecord",
    "SiteApproval",
    "SiteInfo",
    "SiteKeyCert",
    "StudyState",
    "StudyStatus",
    "StudySummary",
    "Submitted",
    "UserCreated",
    "UserSummary",
]

