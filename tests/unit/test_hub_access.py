"""Who sees which study and model (fedcare.hub.access): the rules the role matrix test
checks over HTTPS, here with the cases a running hub rarely has (studies from before users,
registry entries whose study is gone)."""

from __future__ import annotations

import pytest

from fedcare.hub.access import LEGACY_OWNER, check_study, sees_model, sees_study
from fedcare.hub.auth import Principal, Role
from fedcare.hub.errors import Forbidden, NotFound

ALICE = Principal("alice", Role.RESEARCHER)
LEGACY = Principal(LEGACY_OWNER, Role.RESEARCHER)
STEWARD_A = Principal("sam", Role.STEWARD, "alpha")
AUDITOR = Principal("audrey", Role.AUDITOR)
ADMIN = Principal("root", Role.ADMIN)


def test_a_study_from_before_users_belongs_to_the_provisioned_researcher() -> None:
    assert sees_study(LEGACY, None, ["alpha"])
    assert not sees_study(ALICE, None, ["alpha"])


def test_a_steward_sees_their_site_s_studies_only() -> None:
    assert sees_study(STEWARD_A, "alice", ["alpha", "beta"])
    assert not sees_study(STEWARD_A, "alice", ["beta"])
    assert not sees_study(Principal("x", Role.STEWARD, None), "alice", ["alpha"])


def test_unseen_is_not_found_and_results_are_forbidden_to_readers() -> None:
    with pytest.raises(NotFound, match="no study 's1'"):
        check_study(ALICE, "s1", ("bob", ["alpha"]))
    with pytest.raises(NotFound):
        check_study(ALICE, "s1", None)
    with pytest.raises(Forbidden):
        check_study(AUDITOR, "s1", ("bob", ["alpha"]), results=True)
    check_study(ADMIN, "s1", ("bob", ["alpha"]), results=True)
    check_study(ALICE, "s1", ("alice", ["alpha"]), results=True)


def test_a_model_whose_study_is_gone_is_seen_by_the_sites_it_lists() -> None:
    assert sees_model(STEWARD_A, None, ["alpha"])
    assert not sees_model(ALICE, None, ["alpha"])
    assert sees_model(AUDITOR, None, [])
    assert sees_model(ALICE, ("alice", ["beta"]), ["beta"])
