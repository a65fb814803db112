"""The output airlock's HTTP routes, which :func:`fedcare.hub.api.create_app` adds with one
call (:func:`add_airlock_routes`; added to the app itself rather than through an
``APIRouter``, which this FastAPI includes lazily, out of ``app.routes``, where the role
matrix test reads every route's declared roles).

Thin: who may call what is decided here from the caller's :class:`Principal`; what a
request may become is :class:`~fedcare.hub.airlock.ExportDesk`'s (and the rules of
:mod:`fedcare.governance.airlock`).

=====================================  =================================================
route                                  who
=====================================  =================================================
POST /v1/studies/{id}/exports          the researcher who owns the study (another: 404)
GET  /v1/exports                       researcher: their own requests; steward: those of
                                       studies their site takes part in; admin, auditor:
                                       all
GET  /v1/exports/{id}                  as the list (a request the caller may not see: 404)
POST /v1/exports/{id}/decision         a steward of a participating site, once per site
GET  /v1/exports/{id}/download         every role may ask; only the requester of an
                                       approved request gets the bytes (403 / 409 with
                                       what is missing otherwise)
=====================================  =================================================
"""

# No `from __future__ import annotations`: FastAPI reads the routes' signatures.

from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from fedcare.hub.access import LEGACY_OWNER
from fedcare.hub.airlock import MAX_REASON, ExportDesk
from fedcare.hub.auth import Principal, Role, allow
from fedcare.hub.errors import NotFound
from fedcare.hub.schemas import ExportInfo

#: The header the download names the approved SHA-256 in (the client checks the bytes).
SHA_HEADER = "X-Content-SHA256"
ALL_ROLES = (Role.ADMIN, Role.RESEARCHER, Role.STEWARD, Role.AUDITOR)


class ExportAsked(BaseModel):
    model_config = ConfigDict(extra="forbid")
    artifact: str = Field(min_length=1, max_length=100)
    reason: str = Field(max_length=MAX_REASON)


class ExportDecided(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decision: Literal["approve", "reject"]
    reason: str = Field("", max_length=MAX_REASON)


def may_see(who: Principal, view: dict[str, Any]) -> bool:
    """Whether ``who`` may read the export request ``view``."""
    if who.role in (Role.ADMIN, Role.AUDITOR):
        return True
    if who.role is Role.RESEARCHER:
        return bool(view["requester"] == who.user)
    return who.role is Role.STEWARD and who.site in view["sites"]


def add_airlock_routes(app: FastAPI, desk: ExportDesk) -> None:
    Anyone = Annotated[Principal, Depends(allow(*ALL_ROLES))]
    Researcher = Annotated[Principal, Depends(allow(Role.RESEARCHER))]
    Steward = Annotated[Principal, Depends(allow(Role.STEWARD))]

    def visible(export_id: str, who: Principal) -> dict[str, Any]:
        view = desk.get(export_id)
        if not may_see(who, view):
            raise NotFound(f"no export request {export_id!r}")
        return view

    def request(study_id: str, body: ExportAsked, who: Principal) -> dict[str, Any]:
        study = desk.study_of(study_id)
        if (study.owner or LEGACY_OWNER) != who.user:
            # Existence is not disclosed to another researcher (as GET /v1/studies/{id}).
            raise NotFound(f"no study {study_id!r}")
        return desk.request(study_id, body.artifact, who.user, body.reason)

    @app.post("/v1/studies/{study_id}/exports", status_code=201, response_model=ExportInfo)
    async def request_export(study_id: str, body: ExportAsked,
                             who: Researcher) -> dict[str, Any]:
        """Ask to take one of your study's files out of the federation; the answer says
        what the automatic checks found (refused, or awaiting the stewards)."""
        return await run_in_threadpool(request, study_id, body, who)

    @app.get("/v1/exports", response_model=list[ExportInfo])
    async def list_exports(who: Anyone) -> list[dict[str, Any]]:
        if who.role is Role.RESEARCHER:
            return await run_in_threadpool(lambda: desk.list(requester=who.user))
        if who.role is Role.STEWARD:
            if who.site is None:
                return []
            return await run_in_threadpool(lambda: desk.list(site=who.site))
        return await run_in_threadpool(desk.list)

    @app.get("/v1/exports/{export_id}", response_model=ExportInfo)
    async def get_export(export_id: str, who: Anyone) -> dict[str, Any]:
        return await run_in_threadpool(visible, export_id, who)

    def decide(export_id: str, body: ExportDecided, who: Principal) -> dict[str, Any]:
        if who.site is None:
            raise NotFound("a steward without a site decides nothing")
        return desk.decide(export_id, site=who.site, user=who.user,
                           approve=body.decision == "approve", reason=body.reason)

    @app.post("/v1/exports/{export_id}/decision", response_model=ExportInfo)
    async def decide_export(export_id: str, body: ExportDecided,
                            who: Steward) -> dict[str, Any]:
        """Your site's decision (once per site, final): any rejection refuses the export;
        the study's quorum of approvals releases it."""
        return await run_in_threadpool(decide, export_id, body, who)

    @app.get("/v1/exports/{export_id}/download",
                responses={200: {"content": {"application/octet-stream": {}}}})
    async def download_export(export_id: str, who: Anyone) -> Response:
        """The approved bytes, to the requester only, with their SHA-256."""
        def download() -> Any:
            visible(export_id, who)
            return desk.download(export_id, who.user)

        released = await run_in_threadpool(download)
        return Response(released.data, media_type="application/octet-stream", headers={
            SHA_HEADER: released.digest,
            "Content-Disposition": f'attachment; filename="{released.name}"'})
