"""CKKS key custody over the real hub-node protocol (security audit F10, F13).

A CKKS study runs between a hub and three node processes whose kits were each made at the
site. The study's first site makes the key and seals it to the others through the hub's
relay. Afterwards, searched by content: no CKKS secret and no site key anywhere in the
coordinator's federation folder or in the hub's state; each site holds the study's secret in
its own state folder only; what the hub relayed does not contain the secret.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fedcare.privacy.he import HEContext
from tests.integration.network import NetFederation, study_config
from tests.integration.network import net_fixture as net_fixture  # the "net" fixture
from tests.keyscan import find_secrets

Net = Callable[..., NetFederation]
pytestmark = pytest.mark.slow
COORDINATOR_KEYS = {"ca/ca.key": "PEM private key", "hub/hub.key": "PEM private key"}


def test_a_ckks_study_keeps_its_secret_among_the_sites(net: Net) -> None:
    fed = net().start()
    cfg = study_config(name="ckks-custody", rounds=2, secure_aggregation={"protocol": "ckks"},
                       run={"round_timeout": 120})

    st = fed.run_study(cfg, timeout=600)

    for r in st["rounds"]:
        assert r["sites_completed"] == sorted(fed.sites), r["sites_failed"]
    study = st["study_id"]
    # The coordinator's folder (with the hub's state inside it) holds no site key and no
    # CKKS secret: only the CA's and the hub's own keys.
    assert find_secrets(fed.fed_dir) == COORDINATOR_KEYS
    secrets = {}
    for site in fed.sites:
        assert find_secrets(fed.kit(site)) == {"site.key": "PEM private key"}
        state = fed.root / "state" / site  # the node's --state-dir
        found = find_secrets(state)
        path = f"{study}/ckks_secret.ctx"
        assert found == {path: "CKKS secret context"}, found
        secrets[site] = (state / path).read_bytes()
        assert (state / path).stat().st_mode & 0o077 == 0
    # every site of the study holds the same key (the maker's), and it decrypts
    assert len(set(secrets.values())) == 1
    assert HEContext.load_secret(secrets[fed.sites[0]]).is_private
    # the hub relayed sealed copies to the other two sites, none to the maker, all opaque
    sealed = sorted((fed.hub_dir / "data" / "keyrelay" / "studies" / study).iterdir())
    assert [p.name for p in sealed] == [f"{s}.sealed" for s in sorted(fed.sites)[1:]]
    secret = secrets[fed.sites[0]]
    for blob in sealed:
        assert secret[-4096:] not in blob.read_bytes()
    # the researcher follows the study with the researcher folder alone (no private key)
    done = fed.cli("study", "status", study, "--federation", str(fed.researcher_dir))
    assert done.returncode == 0 and "completed" in done.stdout, done.stderr
