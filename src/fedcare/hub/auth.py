"""Who is calling the hub's user endpoints, and whether their role may (issue 13, point 1).

Every user endpoint of :mod:`fedcare.hub.api` declares the roles it admits with
``Depends(allow(Role.ADMIN, ...))``; the dependency answers

* **401** without an ``Authorization: Bearer <token>`` header, with a token no user holds,
  or with a revoked user's token (the same answer for all three, so a caller cannot tell
  which names or token ids exist);
* **403** when the token is valid but the user's role is not one the endpoint admits;

and otherwise hands the endpoint the caller as a :class:`Principal`, whose ``user`` and
``site`` the endpoint uses to scope what it shows (:mod:`fedcare.hub.access`).

Tokens are checked by the app's :class:`~fedcare.hub.users.UserStore`
(``app.state.users``): a cache hit is a dictionary lookup on the event loop, a miss costs
one argon2 verification in a worker thread. Node endpoints do not use this module: a site is
its TLS client certificate.
"""

# No `from __future__ import annotations`: FastAPI reads the dependency's signature.

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

from fastapi import Header, HTTPException, Request
from starlette.concurrency import run_in_threadpool

if TYPE_CHECKING:
    from fedcare.hub.users import UserStore

__all__ = ["Principal", "Role", "allow", "roles_of"]

#: ``Authorization: Bearer <token68>`` (RFC 6750 2.1; the scheme is case-insensitive, RFC 7235).
_BEARER = re.compile(r"([A-Za-z]+) ([A-Za-z0-9\-._~+/]+=*)")


class Role(StrEnum):
    """What a person at the hub does (see docs/governance.md, "People and roles")."""

    ADMIN = "admin"            # adds and revokes users; reads everything
    RESEARCHER = "researcher"  # submits studies; sees only their own studies and models
    STEWARD = "steward"        # speaks for one site; sees the studies that use its data
    AUDITOR = "auditor"        # reads every study's status and events, and every model


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: a user name, a role, and (stewards only) their site."""

    user: str
    role: Role
    site: str | None = None


class _Allow:
    """The dependency :func:`allow` returns. A class, not a closure, so that the roles it
    admits can be read back from the app's routes (:func:`roles_of`): the role matrix test
    builds itself from them, and an endpoint without a declaration fails it."""

    def __init__(self, roles: frozenset[Role]) -> None:
        if not roles:
            raise ValueError("allow() needs at least one role (no role: no endpoint)")
        self.roles = roles

    async def __call__(self, request: Request,
                       authorization: Annotated[str | None, Header()] = None) -> Principal:
        parsed = _BEARER.fullmatch(authorization or "")
        if parsed is None or parsed.group(1).lower() != "bearer":
            raise _unauthorized("missing bearer token: send 'Authorization: Bearer <token>' "
                                "with your own token (the researcher folder's "
                                "researcher.token, or the one `fedcare users add` made)")
        users: UserStore = request.app.state.users
        token = parsed.group(2)
        principal = users.cached(token)
        if principal is None:
            principal = await run_in_threadpool(users.verify, token)
        if principal is None:
            raise _unauthorized("unknown or revoked token: send 'Authorization: Bearer "
                                "<token>' with your own token; the hub's admin makes one "
                                "(`fedcare users add`)")
        if principal.role not in self.roles:
            wanted = ", ".join(sorted(r.value for r in self.roles))
            raise HTTPException(403, f"user {principal.user!r} has role "
                                     f"{principal.role.value}; this endpoint is for: {wanted}")
        return principal


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(401, message, headers={"WWW-Authenticate": "Bearer"})


def allow(*roles: Role) -> _Allow:
    """A FastAPI dependency admitting the users with one of ``roles`` and returning the
    caller: ``principal: Annotated[Principal, Depends(allow(Role.ADMIN))]``."""
    return _Allow(frozenset(roles))


def roles_of(dependency: object) -> frozenset[Role] | None:
    """The roles an :func:`allow` dependency admits (None: not one)."""
    return dependency.roles if isinstance(dependency, _Allow) else None
