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
# (and the hub's own audit key, made at its first start in its state folder: fedcare.hub.audit)
COORDINATOR_KEYS = {"ca/ca.key": "PEM private key", "hub/hub.key": "PEM private key",
                    "hub/data/audit/hub-audit.key": "PEM private key"}


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


def test_the_key_relay_answers_only_the_studys_sites_and_takes_keys_only_from_its_maker(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """In process (the hub's ASGI app, each request as if over mTLS with a site's
    certificate): who may read and write what in ``/v1/node/keys/...``."""
    import asyncio

    import httpx

    from fedcare.hub.api import PeerTrust, create_app
    from fedcare.hub.provisioning import create_federation
    from fedcare.hub.service import HubService, NeverRevoked
    from tests.integration.network import study_config
    from tests.integration.test_api_fuzz import _site_der, _WithClientCert

    root = tmp_path_factory.mktemp("relay")
    names = ["alpha", "beta", "gamma", "delta"]
    fed = create_federation(root / "fed", hub_host="127.0.0.1", sites=names,
                            site_kits=root / "kits")
    service = HubService(root / "data", revocation=NeverRevoked())
    app = create_app(service, PeerTrust(fed.hub.dir))
    for s in names[:3]:  # delta holds no dataset: it is in no study
        service.hello(s, "1", "0.1.0", [{"name": "breast", "rows": 100}], "s" * 8)
    study = service.submit_study(study_config(
        name="relay", rounds=1, secure_aggregation={"protocol": "ckks"}))["study_id"]
    service.stop()

    async def call(site: str, method: str, path: str, body: bytes = b"") -> httpx.Response:
        der = _site_der(fed.site(site).kit_dir)
        transport = httpx.ASGITransport(app=_WithClientCert(app, der))
        async with httpx.AsyncClient(transport=transport, base_url="https://hub") as client:
            if method == "POST":  # hello: the relay learns the certificate from TLS
                return await client.post(path, json={"version": "0.1.0", "session": "x"})
            return await client.request(method, path, content=body)

    def run(*args: str | bytes) -> httpx.Response:
        return asyncio.run(call(*args))  # type: ignore[arg-type]

    try:
        for s in names[:3]:
            assert run(s, "POST", "/v1/node/hello").status_code == 200
        keys = f"/v1/node/keys/{study}"
        certs = run("alpha", "GET", f"{keys}/certs").json()
        assert sorted(certs) == ["alpha", "beta", "gamma"]
        assert not any(c["sealed"] for c in certs.values())
        assert run("delta", "GET", f"{keys}/certs").status_code == 404  # not in the study
        assert run("beta", "GET", f"{keys}/sealed").status_code == 404  # nothing yet
        refused = run("beta", "PUT", f"{keys}/sealed/gamma", b"key from a non-maker")
        assert refused.status_code == 409 and "only site alpha" in refused.json()["detail"]
        assert run("alpha", "PUT", f"{keys}/sealed/beta", b"sealed-for-beta").status_code == 204
        assert run("alpha", "PUT", f"{keys}/sealed/beta", b"swap").status_code == 409
        assert run("alpha", "PUT", f"{keys}/sealed/delta", b"x").status_code == 422
        assert run("beta", "GET", f"{keys}/sealed").content == b"sealed-for-beta"
        assert run("gamma", "GET", f"{keys}/sealed").status_code == 404  # beta's is not gamma's
        assert run("delta", "GET", f"{keys}/sealed").status_code == 404
        assert run("alpha", "GET", f"{keys}/certs").json()["beta"]["sealed"] is True
    finally:
        service.db.dispose()
