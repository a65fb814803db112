"""The hub's HTTP API (FastAPI). Thin: every endpoint calls :class:`HubService`.

Node endpoints (``/v1/node/...``) identify the site by its TLS client certificate only,
never by anything in the request, and refuse a request without a valid, unrevoked site
certificate. Every other endpoint but ``/v1/health`` is for people: it needs a user's own
bearer token and declares the roles it admits (``Depends(allow(...))``, see
:mod:`fedcare.hub.auth`; the matrix is in docs/governance.md), and scopes what it shows to
the caller (:mod:`fedcare.hub.access`). Every error is a 4xx with a ``detail`` that says what
was wrong; fedcare errors never become a 5xx. The API's own description (``/docs``,
``/redoc``, ``/openapi.json``) is off unless the hub is started with ``--api-docs``, and then
needs any user's token.
"""

# No `from __future__ import annotations`: FastAPI must resolve the local dependency
# aliases (Site, Admin, ...) at definition time.

import asyncio
import json
import logging
import time
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, TypeVar

from cryptography import x509
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool

from fedcare import __version__
from fedcare.core.errors import ConfigError, FedcareError, ProtocolError, ValidationError
from fedcare.core.wire import DIGEST_HEADER
from fedcare.engine.registry import RegistryEntry
from fedcare.governance.airlock import AirlockError, ExportConflict, ExportForbidden
from fedcare.governance.approvals import Decision
from fedcare.hub import access
from fedcare.hub.airlock import ExportDesk
from fedcare.hub.airlock_api import add_airlock_routes
from fedcare.hub.audit_api import add_audit_routes
from fedcare.hub.auth import Principal, Role, allow
from fedcare.hub.errors import Forbidden
from fedcare.hub.keyrelay import MAX_SEALED_BYTES, KeyRelay, KeyRelayNotFound
from fedcare.hub.registry import ModelDesk
from fedcare.hub.schemas import (
    DatasetQuality,
    DecisionName,
    DecisionRecorded,
    ErrorBody,
    Event,
    Health,
    HelloAck,
    LedgerHeadAck,
    ModelSummary,
    NewUserRequest,
    NodeStudy,
    PendingStudy,
    ReplyAccepted,
    Resumed,
    SiteInfo,
    SiteKeyCert,
    StudyStatus,
    StudySummary,
    Submitted,
    UserCreated,
    UserSummary,
)
from fedcare.hub.service import (
    HubService,
    NotFound,
    NotResumable,
    Offer,
    StorageUnavailable,
    TooManyPolls,
)
from fedcare.hub.store import DuplicateReply, LateReply, NotDelivered, UnknownTask, WrongSite
from fedcare.hub.store.faults import storage_problem
from fedcare.hub.store.ledger_heads import LedgerHeadRepo
from fedcare.hub.users import UserExists, UserInfo, UserStore, parse_role
from fedcare.pki.errors import CrlError, PeerCertificateError
from fedcare.privacy.dp.ledger import LedgerHead

log = logging.getLogger("fedcare.hub")
_T = TypeVar("_T")

log = logging.getLogger("fedcare.hub")
SHA_HEADER = "X-Content-SHA256"
#: A task's model goes out in slices of this size (views of the one shared copy): handed to
#: the TLS layer whole, each 4 MB model was encrypted into a fresh 4 MB buffer and queued
#: whole; in slices the hub's CPU per send fell by about a third and its time per send by
#: half, and the event loop serves other sites between slices.
SEND_SLICE = 256 * 1024
#: Verified site certificates the hub remembers (a federation has far fewer sites).
VERIFIED_CACHE_SIZE = 4096
#: Largest request body the hub reads for anything but a reply (hello, a study's config);
#: configurable (``fedcare hub start --max-request-kb``). Replies have their own limit
#: (``--max-body-mb``). A hello once stored a 30 MB quality report as sent.
DEFAULT_MAX_REQUEST = 1024 * 1024
#: What one hello may tell: datasets, and per dataset the quality report's JSON size and
#: nesting (a real report is ~5 KB, 6 levels deep) and the row count.
MAX_DATASETS = 64
MAX_QUALITY_BYTES = 256 * 1024
MAX_QUALITY_DEPTH = 16
MAX_ROWS = 10**12
#: Dataset names as node data configs write them (``[datasets.NAME]``): a letter or digit,
#: then letters, digits, ``_``, ``.`` or ``-``.
DATASET_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$"


class RevocationListUnavailable(PeerCertificateError):
    """The hub cannot read or trust its CRL: it cannot tell who is revoked, so it refuses
    every site (fail closed) until the file is back."""


_STATUS: list[tuple[type[Exception], int]] = [
    (ExportForbidden, 403), (ExportConflict, 409), (AirlockError, 422),
    (TooManyPolls, 429), (NotFound, 404), (UnknownTask, 404), (WrongSite, 403),
    (Forbidden, 403), (UserExists, 409),
    (DuplicateReply, 409), (NotDelivered, 409), (LateReply, 410), (ProtocolError, 409),
    (PeerCertificateError, 403), (NotResumable, 409), (StorageUnavailable, 503),
    (ConfigError, 422), (ValidationError, 422), (FedcareError, 400),
]


def status_of(exc: Exception) -> int:
    return next(code for cls, code in _STATUS if isinstance(exc, cls))


class HelloDataset(BaseModel):
    """One dataset a node holds: its name and row count. Typed (it was a free-form dict):
    an entry without ``name``/``rows`` or with a non-numeric ``rows`` made the hub answer 500
    (KeyError/ValueError in HubService.hello); now it is a 422. Unknown keys are ignored so a
    newer node may tell more."""

    name: str = Field(min_length=1, max_length=100, pattern=DATASET_NAME)
    rows: int = Field(ge=0, le=MAX_ROWS)
    #: Clinical datasets: the data contract's hash and the site's small-cell-suppressed
    #: quality report (what `fedcare data check` writes), compared across sites by the hub.
    #: Stored and served back as sent, so bounded (:data:`MAX_QUALITY_BYTES`, depth).
    contract_hash: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    quality: dict[str, Any] | None = None
    #: SHA-256 of the dataset as the site read it, for the model registry's lineage.
    digest: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")

    @field_validator("quality")
    @classmethod
    def _bounded(cls, quality: dict[str, Any] | None) -> dict[str, Any] | None:
        if quality is None:
            return None
        if _depth(quality) > MAX_QUALITY_DEPTH:
            raise ValueError(f"quality report nested deeper than {MAX_QUALITY_DEPTH} levels")
        size = len(json.dumps(quality, separators=(",", ":")))
        if size > MAX_QUALITY_BYTES:
            raise ValueError(f"quality report of {size} B is larger than the hub's limit "
                             f"({MAX_QUALITY_BYTES} B per dataset)")
        return quality


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value, without recursion (the value is a site's input)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in (item.values() if isinstance(item, dict)
                                                  else item))
    return deepest


class Hello(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(max_length=64)
    session: str = Field(max_length=64)
    datasets: list[HelloDataset] = Field(default_factory=list, max_length=MAX_DATASETS)


class SiteDecisionReport(BaseModel):
    """``POST /v1/node/decisions``: a site's decision on a study that names it."""

    model_config = ConfigDict(extra="forbid")

    study_id: str = Field(min_length=1, max_length=64)
    #: The hash the node computed from the config it received ("" when it could not).
    content_hash: str = Field(pattern=r"^([0-9a-f]{64})?$")
    decision: DecisionName
    reason: str | None = Field(None, max_length=2000)


class PeerTrust:
    """The federation CA and its CRL, re-read when the CRL file changes (a revocation made
    with ``fedcare provision revoke`` takes effect without restarting the hub)."""

    def __init__(self, hub_dir: Path) -> None:
        from fedcare.pki.trust import load_ca_certificate, load_hub_config, reload_crl

        self.hub_dir = hub_dir
        self.ca = load_ca_certificate(hub_dir)
        self.crl_path = load_hub_config(hub_dir).crl
        self._reload = reload_crl
        self._mtime = 0.0
        self.crl: x509.CertificateRevocationList = reload_crl(hub_dir)
        self._checked = 0.0
        #: Why the CRL cannot be used right now (None: it can); see :meth:`_fresh_crl`.
        self._broken: str | None = None
        #: Certificates that passed :func:`verify_peer` under the current CRL, with their
        #: validity window: every request of a node carries the same certificate, and the
        #: full check (two signature verifications) took ~7 % of the hub's CPU in the
        #: network benchmark. Emptied whenever the CRL changes.
        self._verified: dict[bytes, tuple[str, datetime, datetime]] = {}

    def site_of(self, cert_der: bytes) -> str:
        from fedcare.pki.trust import verify_peer

        crl = self._fresh_crl()
        known = self._verified.get(cert_der)
        if known is not None:
            site, not_before, not_after = known
            if not_before <= datetime.now(UTC) <= not_after:
                return site
        site = verify_peer(cert_der, self.ca, crl)  # raises for anything not trusted
        cert = x509.load_der_x509_certificate(cert_der)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.clear()
        self._verified[cert_der] = (site, cert.not_valid_before_utc, cert.not_valid_after_utc)
        return site

    def _fresh_crl(self) -> x509.CertificateRevocationList:
        """The current CRL, re-read when its file changed (looked at once a second).

        Fails closed: while the file is missing, unreadable or not signed by the CA, every
        call raises :class:`RevocationListUnavailable` (403, logged once per outage; it was
        a 500 for a missing file) and the CRL read before is not used: a revocation made
        meanwhile could not be seen."""
        now = time.monotonic()
        if self._broken is None and now - self._checked <= 1.0:
            return self.crl
        self._checked = now
        try:
            mtime = self.crl_path.stat().st_mtime
            if mtime != self._mtime or self._broken is not None:
                self.crl, self._mtime = self._reload(self.hub_dir), mtime
                self._verified = {}
        except (OSError, CrlError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else str(exc)
            if self._broken is None:
                log.error("refusing every site: the hub cannot read its revocation list "
                          "%s (%s)", self.crl_path, why)
            self._broken = why
            self._verified = {}
            raise RevocationListUnavailable(
                f"the hub cannot read its revocation list ({self.crl_path.name}: {why}), so "
                "it refuses every site until the file is back; the hub's operator must "
                "restore it (a copy of the federation's hub/crl.pem)") from None
        if self._broken is not None:
            log.warning("revocation list %s readable again", self.crl_path)
            self._broken = None
        return self.crl

    def is_revoked(self, serial_hex: str) -> bool:
        """Whether the certificate with this serial (hex, as the site table stores it) is on
        the current CRL: a revoked site is left out of every study submitted afterwards."""
        return self._fresh_crl().get_revoked_certificate_by_serial_number(
            int(serial_hex, 16)) is not None


class _TaskResponse(Response):
    """A task payload sent as its two parts, the model straight from the one copy every
    site's task shares (a plain Response would need them joined: a copy per site)."""

    media_type = "application/octet-stream"

    def __init__(self, offer: Offer, task_id: str) -> None:
        self.parts = (offer.head, offer.body)
        super().__init__(headers={
            "content-length": str(offer.size), "X-Fedcare-Task-Id": task_id,
            "X-Fedcare-Study": offer.study_id, DIGEST_HEADER: offer.digest})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        head, body = self.parts
        await send({"type": "http.response.body", "body": head, "more_body": bool(body)})
        view = memoryview(body)
        for start in range(0, len(view), SEND_SLICE):
            end = start + SEND_SLICE
            await send({"type": "http.response.body", "body": view[start:end],
                        "more_body": end < len(view)})


def _parse_head(value: str | None) -> LedgerHead | None:
    """The ledger head a node reported in ``X-Fedcare-Ledger-Head`` (None: it sent none)."""
    return None if value is None else LedgerHead.parse(value)


def anchor_ledger_head(service: HubService, site: str, reported: LedgerHead | None
                       ) -> str | None:
    """Record the privacy-ledger head ``site`` reported (if any) and return the head the hub
    holds for it, which is what the node keeps as its ledger's anchor. A report that does
    not go beyond the held head is refused, and logged: that site's ledger was cut, deleted
    or replaced (see :mod:`fedcare.hub.store.ledger_heads`)."""
    with service.db.session() as s:
        repo = LedgerHeadRepo(s)
        held = repo.get(site) if reported is None else repo.report(site, reported.count,
                                                                   reported.hash)
    if held is not None and held.refused:
        service.event("ledger", f"site {site} reported privacy-ledger head {reported}, which "
                      f"does not extend the head {held} the hub acknowledged: its ledger was "
                      "cut, deleted or replaced; its node refuses to charge until its steward "
                      "restores the ledger", site=site)
    return None if held is None else str(held)


class _BodyLimit:
    """ASGI middleware: refuse (413) a request body larger than ``limit`` bytes, before it is
    read whole: by its Content-Length, else while it streams in. ``exempt`` paths and
    ``exempt_prefixes`` (the reply upload and the CKKS key relay, which have their own, larger
    limits) pass untouched. FastAPI reads a JSON body into memory before validating it, so a
    model's ``max_length`` alone bounds nothing."""

    def __init__(self, app: Any, limit: int, exempt: frozenset[str],
                 exempt_prefixes: tuple[str, ...] = ()) -> None:
        self.app, self.limit, self.exempt = app, limit, exempt
        self.exempt_prefixes = exempt_prefixes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (scope["type"] != "http" or scope["path"] in self.exempt
                or scope["path"].startswith(self.exempt_prefixes)):
            await self.app(scope, receive, send)
            return
        too_big = (f"request body larger than the hub's limit ({self.limit} B; replies have "
                   "their own)")
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await JSONResponse({"detail": too_big}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def limited() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise HTTPException(413, too_big)  # answered by the app's handlers
            return message

        await self.app(scope, limited, send)


async def _unless_disconnected(request: Request, poll: Coroutine[Any, Any, _T]) -> _T | None:
    """Run a long-poll (it waits on the event loop, holding no thread) until it ends or its
    client goes away (None). A poll whose node died or restarted would otherwise keep one of
    its site's MAX_POLLS_PER_SITE slots for up to its ``wait``. A task the poll had just
    taken when its client went away is handed out again after REDELIVER_AFTER, like any
    answer lost on the way."""
    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass  # the (empty) request body

    polling, watching = asyncio.ensure_future(poll), asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({polling, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watching.cancel()
        if not polling.done():  # the client went away (or this request was cancelled)
            polling.cancel()  # its finally gives the site's poll slot back
    return polling.result() if polling.done() else None


def _user(info: UserInfo) -> UserSummary:
    return UserSummary(name=info.name, role=info.role.value, site=info.site,
                       created=info.created.isoformat(),
                       revoked=None if info.revoked is None else info.revoked.isoformat())


def create_app(service: HubService, trust: PeerTrust, users: UserStore | None = None, *,
               max_request: int = DEFAULT_MAX_REQUEST, api_docs: bool = False,
               relay: KeyRelay | None = None) -> FastAPI:
    """The hub's API over ``service``.

    Args:
        trust: the federation CA and CRL that identify sites by their certificates.
        users: the people who may call the user endpoints (default: the service's).
        max_request: largest body of any request but a reply (bytes).
        api_docs: serve ``/docs``, ``/redoc`` and ``/openapi.json`` (any user's token).
        relay: where CKKS study keys sealed by one site for another wait (default: the
            hub's state folder).
    """
    relay = relay or KeyRelay(service.data_dir / "keyrelay")
    app = FastAPI(title="fedcare hub", version=__version__,
                  description="Coordinates federated studies; nodes dial in over mTLS.",
                  docs_url=None, redoc_url=None, openapi_url=None,
                  # every refusal: a `detail` that says why (and the fedcare error's name)
                  responses={"4XX": {"model": ErrorBody}, "5XX": {"model": ErrorBody}})
    app.state.users = users or service.users
    app.add_middleware(_BodyLimit, limit=max_request,  # type: ignore[arg-type]
                       exempt=frozenset({"/v1/node/reply"}),
                       # a sealed CKKS study key is several MB; its route has its own limit
                       exempt_prefixes=("/v1/node/keys/",))

    @app.exception_handler(FedcareError)
    async def _fedcare_error(request: Request, exc: FedcareError) -> JSONResponse:
        return JSONResponse({"detail": exc.message, "error": type(exc).__name__},
                            status_code=status_of(exc))

    @app.exception_handler(KeyRelayNotFound)
    async def _no_key_yet(request: Request, exc: KeyRelayNotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "error": type(exc).__name__}, status_code=404)

    # Dependencies are coroutines: FastAPI runs a plain function dependency in a worker thread,
    # one thread hop per request for what is a dictionary lookup once the certificate is known.
    async def site(request: Request) -> str:
        tls = request.scope.get("extensions", {}).get("tls", {})
        der = tls.get("client_cert")
        if not der:
            raise HTTPException(401, "node endpoints need the site's client certificate "
                                     "(mutual TLS); use the site's startup kit")
        return trust.site_of(der)

    Site = Annotated[str, Depends(site)]
    # Who may call what (docs/governance.md, "People and roles"); scoping within an endpoint
    # is fedcare.hub.access.
    Admin = Annotated[Principal, Depends(allow(Role.ADMIN))]
    Submitter = Annotated[Principal, Depends(allow(Role.RESEARCHER))]
    Owner = Annotated[Principal, Depends(allow(Role.RESEARCHER, Role.ADMIN))]
    Reader = Annotated[Principal, Depends(allow(*Role))]
    AnyUser = Depends(allow(*Role))

    def parties(study_id: str) -> tuple[str | None, list[str]] | None:
        return service.studies.parties(study_id).get(study_id)

    async def check_study(who: Principal, study_id: str, *, results: bool = False) -> None:
        found = await run_in_threadpool(parties, study_id)
        access.check_study(who, study_id, found, results=results)

    if api_docs:
        @app.get("/openapi.json", dependencies=[AnyUser], include_in_schema=False)
        async def openapi() -> JSONResponse:
            return JSONResponse(app.openapi())

        @app.get("/docs", dependencies=[AnyUser], include_in_schema=False)
        async def docs() -> HTMLResponse:
            return get_swagger_ui_html(openapi_url="/openapi.json", title="fedcare hub")

        @app.get("/redoc", dependencies=[AnyUser], include_in_schema=False)
        async def redoc() -> HTMLResponse:
            return get_redoc_html(openapi_url="/openapi.json", title="fedcare hub")

    # -- node endpoints -------------------------------------------------------------------
    @app.post("/v1/node/hello")
    async def hello(body: Hello, site: Site, request: Request,
                    x_fedcare_ledger_head: Annotated[str | None, Header(max_length=100)] = None
                    ) -> HelloAck:
        der = request.scope["extensions"]["tls"]["client_cert"]
        serial = f"{x509.load_der_x509_certificate(der).serial_number:x}"
        reported = _parse_head(x_fedcare_ledger_head)
        await run_in_threadpool(service.hello, site, serial, body.version,
                                [d.model_dump() for d in body.datasets], body.session)
        # The study key relay seals CKKS keys to the certificate a site authenticated with.
        await run_in_threadpool(relay.remember_certificate, site, der)
        held = await run_in_threadpool(anchor_ledger_head, service, site, reported)
        return HelloAck(site=site, hub_version=__version__, ledger_head=held)

    @app.get("/v1/node/ledger-head")
    async def ledger_head(site: Site) -> LedgerHeadAck:
        """The privacy-ledger head the hub holds for the calling site (its anchor)."""
        held = await run_in_threadpool(anchor_ledger_head, service, site, None)
        return LedgerHeadAck(site=site, ledger_head=held)

    @app.get("/v1/node/task", responses={204: {"description": "no task yet"}})
    async def next_task(site: Site, request: Request,
                        wait: Annotated[float, Query(ge=0, le=60)] = 20.0) -> Response:
        found = await _unless_disconnected(request, service.next_task(site, wait))
        if found is None:
            return Response(status_code=204)
        # The certificate was checked when the long-poll began, up to `wait` s ago: check it
        # again, or a site revoked in the meantime is still handed the task (and the global
        # model in it). Its task stays unanswered; the round's deadline treats it like any
        # silent site.
        trust.site_of(request.scope["extensions"]["tls"]["client_cert"])
        task_id, offer = found
        return _TaskResponse(offer, task_id)

    @app.get("/v1/node/studies/{study_id}", response_model=NodeStudy)
    async def node_study(study_id: str, site: Site) -> dict[str, Any]:
        return await run_in_threadpool(service.study_for_node, site, study_id)

    @app.get("/v1/node/pending", response_model=list[PendingStudy])
    async def node_pending(site: Site) -> list[dict[str, Any]]:
        """The studies waiting for the calling site's decision (its steward's ``fedcare
        node approve|reject``), with their full configs."""
        return await run_in_threadpool(service.pending_for, site)

    @app.post("/v1/node/decisions", response_model=DecisionRecorded)
    async def node_decision(body: SiteDecisionReport, site: Site) -> dict[str, Any]:
        """The calling site's decision on a study that names it (approved, rejected,
        revoked, or refused by its node); only an approval of the study's exact content
        hash counts."""
        return await run_in_threadpool(service.site_decided, site, body.study_id,
                                       Decision(body.decision), body.content_hash,
                                       body.reason)

    @app.post("/v1/node/reply", status_code=202)
    async def reply(request: Request, site: Site,
                    task_id: Annotated[str, Query(min_length=1, max_length=400)],
                    x_content_sha256: Annotated[str | None, Header()] = None,
                    x_fedcare_ledger_head: Annotated[str | None, Header(max_length=100)] = None
                    ) -> ReplyAccepted:
        async def refuse(code: int, message: str) -> NoReturn:
            # Decided here, before HubService sees the reply: log it as the service logs its
            # own refusals, so that every rejected reply shows in `fedcare study logs`.
            await run_in_threadpool(service.rejected, site, task_id, f"{code}: {message}")
            raise HTTPException(code, message)

        if request.headers.get("content-type", "") != "application/octet-stream":
            await refuse(415, "replies are application/octet-stream (fedcare wire format)")
        try:
            reported = _parse_head(x_fedcare_ledger_head)
        except ValidationError as exc:
            await refuse(422, exc.message)
        too_big = f"body larger than the hub's limit ({service.max_body} B)"
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > service.max_body:
            await refuse(413, too_big)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > service.max_body:
                await refuse(413, too_big)
            chunks.append(chunk)
        await run_in_threadpool(service.receive_reply, site, task_id, b"".join(chunks),
                                x_content_sha256)
        held = await run_in_threadpool(anchor_ledger_head, service, site, reported)
        return ReplyAccepted(accepted=True, ledger_head=held)

    # -- CKKS key relay (node endpoints; opaque sealed blobs, see fedcare.hub.keyrelay) ------
    async def study_sites(site: str, study_id: str) -> list[str]:
        doc = await run_in_threadpool(service.study_for_node, site, study_id)  # 404 if not in it
        return list(doc["sites"])

    @app.get("/v1/node/keys/{study_id}/certs", response_model=dict[str, SiteKeyCert])
    async def key_certs(study_id: str, site: Site) -> dict[str, dict[str, object]]:
        sites = await study_sites(site, study_id)
        return await run_in_threadpool(relay.certificates, study_id, sites)

    @app.put("/v1/node/keys/{study_id}/sealed/{recipient}", status_code=204)
    async def key_put(study_id: str, recipient: str, site: Site, request: Request) -> Response:
        sites = await study_sites(site, study_id)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_SEALED_BYTES:
            raise HTTPException(413, f"a sealed key is at most {MAX_SEALED_BYTES} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_SEALED_BYTES:
                raise HTTPException(413, f"a sealed key is at most {MAX_SEALED_BYTES} bytes")
            chunks.append(chunk)
        await run_in_threadpool(relay.put_sealed, study_id, sites, site, recipient,
                                b"".join(chunks))
        return Response(status_code=204)

    @app.get("/v1/node/keys/{study_id}/sealed")
    async def key_get(study_id: str, site: Site) -> Response:
        await study_sites(site, study_id)
        blob = await run_in_threadpool(relay.get_sealed, study_id, site)
        return Response(blob, media_type="application/octet-stream")

    # -- people's endpoints ------------------------------------------------------------------
    @app.post("/v1/studies", status_code=201, response_model=Submitted)
    async def submit(who: Submitter, config: dict[str, Any], force: Annotated[bool, Query(
            description="run a DP-FedAvg study the DP check refuses (noise drowns the "
                        "updates)")] = False) -> dict[str, Any]:
        """Submit a study; the caller becomes its owner (the only researcher who sees it)."""
        return await run_in_threadpool(
            lambda: service.submit_study(config, force, owner=who.user))

    @app.get("/v1/studies", response_model=list[StudySummary])
    async def studies(who: Reader) -> list[dict[str, Any]]:
        """The studies the caller may see: a researcher's own, a steward's site's, all for
        admins and auditors."""
        listed = await run_in_threadpool(service.list_studies)
        return [st for st in listed if access.sees_study(who, st["owner"], st["sites"])]

    @app.get("/v1/studies/{study_id}", response_model=StudyStatus)
    async def status(who: Reader, study_id: str, rounds: Annotated[int | None, Query(
            ge=0, le=1_000_000, description="only the last N rounds' records (default: all)")]
            = None) -> dict[str, Any]:
        await check_study(who, study_id)
        return await run_in_threadpool(service.study_status, study_id, rounds)

    @app.post("/v1/studies/{study_id}/resume", response_model=Resumed)
    async def resume(who: Owner, study_id: str) -> dict[str, Any]:
        """Continue a paused study (stopped because the hub could not write its storage)
        from its last completed round: 409 when it is not paused, 503 while the storage
        still cannot be written."""
        await check_study(who, study_id, results=True)
        return await run_in_threadpool(service.resume_study, study_id)

    async def _storage_error(request: Request, exc: Exception) -> JSONResponse:
        """Any request the hub cannot store (disk full, read-only): a 503 that says so, not
        a bare 500; a node retries it later, as it does any 5xx. Other errors: a 500."""
        problem = storage_problem(exc)
        if problem is None:
            raise exc
        log.warning("%s %s: the hub cannot write its storage: %s", request.method,
                    request.url.path, problem)
        return JSONResponse({"detail": f"the hub cannot write its storage: {problem}",
                             "error": "StorageUnavailable"}, status_code=503,
                            headers={"Retry-After": "30"})

    for storage_error_type in (OSError, DBAPIError):
        app.add_exception_handler(storage_error_type, _storage_error)

    @app.get("/v1/studies/{study_id}/events", response_model=list[Event])
    async def events(who: Reader, study_id: str) -> list[dict[str, Any]]:
        await check_study(who, study_id)
        return await run_in_threadpool(service.study_events, study_id)

    @app.get("/v1/datasets/{name}/quality", dependencies=[AnyUser],
             response_model=DatasetQuality)
    async def dataset_quality(name: str) -> dict[str, Any]:
        return await run_in_threadpool(service.dataset_quality, name)

    @app.get("/v1/sites", dependencies=[AnyUser], response_model=list[SiteInfo])
    async def sites() -> list[dict[str, Any]]:
        return await run_in_threadpool(service.sites)

    models = ModelDesk(service.state)

    def model_visible(who: Principal, study_id: str | None, sites: list[str]) -> bool:
        study = None if study_id is None else parties(study_id)
        return access.sees_model(who, study, sites)

    def check_model(who: Principal, entry_id: str) -> None:
        summary = next((m for m in models.list() if m["id"] == entry_id), None)
        if summary is None or not model_visible(who, summary["study_id"], summary["sites"]):
            raise NotFound(f"no registered model {entry_id!r} (see GET /v1/models)")

    @app.get("/v1/models", response_model=list[ModelSummary])
    async def model_list(who: Reader, study: Annotated[str | None, Query(
            max_length=64, description="only this study's releases")] = None
            ) -> list[dict[str, Any]]:
        """The model registry: the released global models the caller may see, oldest first
        (read-only: no route adds, changes or deletes an entry)."""
        def visible() -> list[dict[str, Any]]:
            table = service.studies.parties()
            return [m for m in models.list(study) if access.sees_model(
                who, None if m["study_id"] is None else table.get(m["study_id"]),
                m["sites"])]
        return await run_in_threadpool(visible)

    @app.get("/v1/models/{entry_id}", response_model=RegistryEntry)
    async def model_entry(who: Reader, entry_id: str) -> RegistryEntry:
        await run_in_threadpool(check_model, who, entry_id)
        return await run_in_threadpool(models.get, entry_id)

    @app.get("/v1/models/{entry_id}/card")
    async def model_card(who: Reader, entry_id: str, request: Request, format: Annotated[
            Literal["md", "html"] | None, Query(
                description="md or html (default: from Accept; Markdown)")] = None
            ) -> Response:
        await run_in_threadpool(check_model, who, entry_id)
        html = format == "html" or (format is None
                                    and "text/html" in request.headers.get("accept", ""))
        text = await run_in_threadpool(models.card, entry_id, html)
        return Response(text, media_type="text/html; charset=utf-8" if html
                        else "text/markdown; charset=utf-8")

    # -- users (admins only) ------------------------------------------------------------
    people: UserStore = app.state.users

    @app.post("/v1/users", status_code=201, response_model=UserCreated)
    async def add_user(who: Admin, body: NewUserRequest) -> UserCreated:
        """A new user; the answer holds their token, the only time it is shown."""
        made = await run_in_threadpool(lambda: people.add(
            body.name, parse_role(body.role), body.site, by=who.user))
        return UserCreated(**_user(made.user).model_dump(), token=made.token)

    @app.get("/v1/users", response_model=list[UserSummary])
    async def list_users(who: Admin) -> list[UserSummary]:
        return [_user(u) for u in await run_in_threadpool(people.list)]

    @app.delete("/v1/users/{name}", response_model=UserSummary)
    async def revoke_user(who: Admin, name: str) -> UserSummary:
        """Revoke ``name``'s token: refused from the very next request on."""
        return _user(await run_in_threadpool(lambda: people.revoke(name, by=who.user)))

    add_airlock_routes(app, ExportDesk(service.state))  # /v1/.../exports...
    add_audit_routes(app, service.state.audit)  # /v1/audit/key, /v1/audit/log

    @app.get("/v1/health")
    async def health() -> Health:
        return Health(status="ok", version=__version__)

    return app

