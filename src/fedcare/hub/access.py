"""Which studies and models a user may see (the scoping half of the role matrix in
docs/governance.md; :mod:`fedcare.hub.auth` decides the other half, which roles may call an
endpoint at all).

* an **admin** sees everything;
* a **researcher** sees the studies they submitted, and those studies' models;
* an **auditor** sees every study's status and events and every model, no artifact;
* a **steward** sees the status and events of the studies their site takes part in, and
  their models, no artifact.

A study someone may not see does not exist for them: the answer is the same 404 as for a
study id that was never used, so guessing ids does not tell which studies exist. Only where
the study is visible but the part asked for is not (an auditor asking for a model file) is
the answer a 403.

Studies submitted before the hub had users (``owner`` NULL, all of them under the one shared
researcher token) belong to the user :data:`LEGACY_OWNER`, the researcher provisioning makes.
"""

from __future__ import annotations

from fedcare.hub.auth import Principal, Role
from fedcare.hub.errors import Forbidden, NotFound

#: Who owns the studies submitted under the shared researcher token of older hubs.
LEGACY_OWNER = "researcher"


def sees_study(who: Principal, owner: str | None, sites: list[str]) -> bool:
    """Whether ``who`` may read the study's status and events."""
    if who.role in (Role.ADMIN, Role.AUDITOR):
        return True
    if who.role is Role.RESEARCHER:
        return (owner or LEGACY_OWNER) == who.user
    return who.role is Role.STEWARD and who.site is not None and who.site in sites


def sees_results(who: Principal, owner: str | None) -> bool:
    """Whether ``who`` may resume the study: its owner, an admin. (Its files leave only
    through the airlock, :mod:`fedcare.hub.airlock_api`.)"""
    return who.role is Role.ADMIN or (who.role is Role.RESEARCHER
                                      and (owner or LEGACY_OWNER) == who.user)


def check_study(who: Principal, study_id: str, parties: tuple[str | None, list[str]] | None,
                *, results: bool = False) -> None:
    """Raise :class:`NotFound` unless ``who`` sees the study (``parties``: its owner and
    sites, None when there is no such study), and, with ``results``, :class:`Forbidden`
    unless they may have its results too."""
    if parties is None or not sees_study(who, *parties):
        raise NotFound(f"no study {study_id!r}")
    if results and not sees_results(who, parties[0]):
        raise Forbidden(f"a {who.role.value} reads a study's status and events, not its "
                        "results; its researcher or an admin can")


def sees_model(who: Principal, study: tuple[str | None, list[str]] | None,
               entry_sites: list[str]) -> bool:
    """Whether ``who`` may read a registry entry (and its card): through its study when the
    hub still has it (``study``: owner and sites), else by the sites the entry lists."""
    if who.role in (Role.ADMIN, Role.AUDITOR):
        return True
    if study is not None:
        return sees_study(who, *study)
    return who.role is Role.STEWARD and who.site is not None and who.site in entry_sites
