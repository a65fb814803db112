"""A user's token for tests that call the hub's app in-process (the hub has no shared token:
each caller is a user of its database, see fedcare.hub.users)."""

from __future__ import annotations

from fedcare.hub.auth import Role
from fedcare.hub.service import HubService


def user_token(service: HubService, name: str = "researcher",
               role: Role = Role.RESEARCHER, site: str | None = None) -> str:
    """Add user ``name`` to the hub's database (or, when it exists, a fresh user with a
    suffixed name) and return their token."""
    taken = {u.name for u in service.users.list()}
    suffix = 0
    while (f"{name}{suffix}" if suffix else name) in taken:
        suffix += 1
    return service.users.add(f"{name}{suffix}" if suffix else name, role, site,
                             by="test").token


#: A well-formed token with a fixed value, for tests that name the token before the hub exists.
TOKEN = "fc_" + "0" * 16 + "_" + "A" * 43


def install_token(service: HubService, token: str = TOKEN, name: str = "researcher",
                  role: Role = Role.RESEARCHER, site: str | None = None) -> str:
    """Make ``token`` (``fc_<id>_<secret>``) the token of a new user ``name``; returns it."""
    from fedcare.hub.users import hash_token

    service.users.import_hashed([{"name": name, "role": role.value, "site": site,
                                  "token_id": token.split("_")[1],
                                  "token_hash": hash_token(token)}])
    return token
