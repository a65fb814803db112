"""The hub's audit trail for auditors, over HTTPS: its public key and the signed log itself,
which :func:`fedcare.hub.api.create_app` adds with one call (:func:`add_audit_routes`; added
to the app itself, as the airlock's routes, so the role matrix test sees their roles).

Why: an auditor (or an admin answering one) should not need a shell on the hub's machine to
check what the hub did. ``fedcare audit fetch`` saves both files and ``fedcare audit verify
--log ... --key ...`` checks them. The key served here proves only that the log was not
changed since the hub signed it; compare its fingerprint (the ``X-Key-SHA256`` header, also
printed by ``fedcare audit fetch``) with one noted out of band (``hub-audit.pub.pem`` in the
hub's state folder's ``audit/``, on the hub's machine) to also know it is the hub's.

=====================  =====================
route                  who
=====================  =====================
GET /v1/audit/key      admin, auditor
GET /v1/audit/log      admin, auditor
=====================  =====================
"""

# No `from __future__ import annotations`: FastAPI reads the routes' signatures.

import hashlib
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Response
from starlette.concurrency import run_in_threadpool

from fedcare.hub.audit import AuditTrail
from fedcare.hub.auth import Principal, Role, allow
from fedcare.hub.errors import NotFound

#: The header that carries the SHA-256 of the hub's public key (PEM bytes).
KEY_SHA_HEADER = "X-Key-SHA256"
#: The header that carries the SHA-256 of the log bytes served.
LOG_SHA_HEADER = "X-Content-SHA256"


def _read(path: Path | None, what: str) -> bytes:
    if path is None or not path.is_file():
        raise NotFound(f"this hub keeps no {what} (it runs without a state folder, or has "
                       "written no entry yet)")
    return path.read_bytes()


def add_audit_routes(app: FastAPI, trail: AuditTrail) -> None:
    Auditor = Annotated[Principal, Depends(allow(Role.ADMIN, Role.AUDITOR))]

    @app.get("/v1/audit/key", tags=["audit"],
             responses={200: {"content": {"application/x-pem-file": {}}}})
    async def audit_key(who: Auditor) -> Response:
        """The hub's Ed25519 public key (PEM) its audit entries are signed with."""
        pem = await run_in_threadpool(_read, trail.public_key_file, "audit key")
        return Response(pem, media_type="application/x-pem-file",
                        headers={KEY_SHA_HEADER: hashlib.sha256(pem).hexdigest()})

    @app.get("/v1/audit/log", tags=["audit"],
             responses={200: {"content": {"application/jsonl": {}}}})
    async def audit_log(who: Auditor) -> Response:
        """The hub's signed, hash-chained audit log (JSON Lines), every entry written so far
        (entries still queued are written first). Verify it with ``fedcare audit verify``."""
        def read() -> bytes:
            trail.flush()
            return _read(trail.path, "audit log")

        data = await run_in_threadpool(read)
        return Response(data, media_type="application/jsonl",
                        headers={LOG_SHA_HEADER: hashlib.sha256(data).hexdigest()})
