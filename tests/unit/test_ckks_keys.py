"""CKKS key custody and what a decrypting site accepts (security audit F10).

The first tests replay the audit's ``ckks_demo.py``: a hub that deviates from the protocol
sends one site's own ciphertext to another site as "the sum". Each site now holds a real
identity (its kit from a provisioned federation), signs its ciphertext, and decrypts only
the sum of verified contributions of the round.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from fedcare.core.errors import ProtocolError, ValidationError
from fedcare.core.messages import Task, TaskKind
from fedcare.core.params import Parameters
from fedcare.engine.ckks_custody import (
    FixedKeys,
    SiteIdentity,
    contribution_message,
    open_secret,
    seal_secret,
)
from fedcare.engine.secure import PROTOCOL_AUX, SecureSettings, SecureSite
from fedcare.hub.keyrelay import KeyRelay, KeyRelayNotFound
from fedcare.hub.provisioning import create_federation
from fedcare.privacy.he import HEContext, create_federation_context

SITES = ["hospital-1", "hospital-2", "hospital-3"]
META = {"secure": "ckks", "participants": SITES}
SECRET_UPDATE = np.array([10.5, -3.25, 7.0, 0.125, 42.0])  # [w*(x-g), w] of hospital-1


@pytest.fixture(scope="module")
def kits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ckks")
    create_federation(root / "fed", hub_host="127.0.0.1", sites=SITES, site_kits=root / "kits")
    return root / "kits"


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> SiteIdentity:
    """hospital-1 of ANOTHER federation (same name, another CA)."""
    root = tmp_path_factory.mktemp("foreign")
    create_federation(root / "fed", hub_host="127.0.0.1", sites=["hospital-1"],
                      site_kits=root / "kits")
    return SiteIdentity.from_kit(root / "kits" / "hospital-1")


@pytest.fixture(scope="module")
def ids(kits: Path) -> dict[str, SiteIdentity]:
    return {s: SiteIdentity.from_kit(kits / s) for s in SITES}


@pytest.fixture(scope="module")
def secret() -> bytes:
    return create_federation_context()[0]


def _site(name: str, ids: dict[str, SiteIdentity], secret: bytes) -> SecureSite:
    return SecureSite(name, SecureSettings("ckks"), SITES, identity=ids[name],
                      keys=FixedKeys(secret))


def _fit(site: str, round_: int = 1) -> Task:
    return Task(task_id=f"s/r{round_}/fit/{site}", study="s", round=round_, site=site,
                kind=TaskKind.FIT, parameters=Parameters({"w": np.zeros(4, np.float32)}),
                meta=META)


def _decrypt(site: str, arrays: dict[str, np.ndarray], included: list[str],
             round_: int = 1) -> Task:
    return Task(task_id=f"s/r{round_}/he_decrypt/{site}", study="s", round=round_, site=site,
                kind=TaskKind.HE_DECRYPT, parameters=Parameters({}),
                aux={PROTOCOL_AUX: Parameters(arrays, allow_integer=True)},
                meta={**META, "included": included})


def _contributions(ids: dict[str, SiteIdentity], secret: bytes, decryptor: str,
                   round_: int = 1) -> tuple[SecureSite, dict[str, dict[str, np.ndarray]]]:
    """Every site's signed fit answer; returns the decryptor's session too."""
    vectors = {"hospital-1": SECRET_UPDATE, "hospital-2": np.ones(5), "hospital-3": np.full(5, 2.)}
    answers, keep = {}, None
    for name in SITES:
        site = _site(name, ids, secret)
        answers[name] = dict(site.start(_fit(name, round_), vectors[name])[PROTOCOL_AUX].items())
        if name == decryptor:
            keep = site
    assert keep is not None
    return keep, answers


def _flat(answers: dict[str, dict[str, np.ndarray]], sites: list[str]) -> dict[str, np.ndarray]:
    return {f"{k}.{s}": v for s in sites for k, v in answers[s].items()}


def test_a_site_refuses_one_sites_ciphertext_presented_as_the_sum(
        ids: dict[str, SiteIdentity], secret: bytes) -> None:
    b, answers = _contributions(ids, secret, "hospital-2")
    ct_a = answers["hospital-1"]["ct"]

    # the audit's repro: hospital-1's own ciphertext as "ct" (the old "sum" field)
    with pytest.raises(ProtocolError, match="without its ciphertext, signature"):
        b.step(_decrypt("hospital-2", {"ct": ct_a}, SITES))
    # ... or hospital-1's signed contribution alone, with every site said to be included
    with pytest.raises(ProtocolError, match="site hospital-2's contribution comes without"):
        b.step(_decrypt("hospital-2", _flat(answers, ["hospital-1"]), SITES))
    # ... or honestly labelled, but a "sum" of one site
    with pytest.raises(ProtocolError, match=r"at least \d+ distinct sites"):
        b.step(_decrypt("hospital-2", _flat(answers, ["hospital-1"]), ["hospital-1"]))
    # ... or hospital-1's ciphertext relabelled as each other site's, with their certificates
    relabelled = _flat(answers, SITES)
    for s in ("hospital-2", "hospital-3"):
        relabelled[f"ct.{s}"] = ct_a
    with pytest.raises(ProtocolError, match="signature does not verify"):
        b.step(_decrypt("hospital-2", relabelled, SITES))


def test_a_site_refuses_forged_unsigned_and_replayed_contributions(
        ids: dict[str, SiteIdentity], foreign: SiteIdentity, secret: bytes) -> None:
    b, answers = _contributions(ids, secret, "hospital-2")
    ctx = HEContext.load_secret(secret)
    from fedcare.privacy.he import encrypt_vector

    # forged: a ciphertext the attacker made, signed by a "hospital-1" of another CA
    fake = encrypt_vector(ctx, np.full(5, 99.0))
    forged = _flat(answers, SITES)
    forged["ct.hospital-1"] = np.frombuffer(fake, np.uint8)
    forged["sig.hospital-1"] = np.frombuffer(
        foreign.sign(contribution_message("s", 1, "hospital-1", fake)), np.uint8)
    forged["cert.hospital-1"] = np.frombuffer(foreign.cert_der(), np.uint8)
    with pytest.raises(ProtocolError, match="not a site certificate of this federation's CA"):
        b.step(_decrypt("hospital-2", forged, SITES))
    # unsigned: the genuine ciphertext with a signature of zeros
    unsigned = _flat(answers, SITES)
    unsigned["sig.hospital-1"] = np.zeros(71, np.uint8)
    with pytest.raises(ProtocolError, match="signature does not verify"):
        b.step(_decrypt("hospital-2", unsigned, SITES))
    # replayed: round-1 contributions offered for round 2
    b2, _ = _contributions(ids, secret, "hospital-2", round_=2)
    with pytest.raises(ProtocolError, match="signature does not verify"):
        b2.step(_decrypt("hospital-2", _flat(answers, SITES), SITES, round_=2))


def test_a_site_decrypts_the_sum_of_the_rounds_signed_contributions(
        ids: dict[str, SiteIdentity], secret: bytes) -> None:
    b, answers = _contributions(ids, secret, "hospital-2")

    out = b.step(_decrypt("hospital-2", _flat(answers, SITES), SITES))[PROTOCOL_AUX]["sum"]

    np.testing.assert_allclose(out, SECRET_UPDATE + 1.0 + 2.0, atol=1e-5)
    with pytest.raises(ProtocolError, match="no secure-aggregation session"):  # once a round
        b.step(_decrypt("hospital-2", _flat(answers, SITES), SITES))


# --- the study key, sealed from its maker to each other site -------------------------------

def test_a_sealed_key_opens_only_at_its_recipient_and_only_from_the_maker(
        ids: dict[str, SiteIdentity], foreign: SiteIdentity, secret: bytes) -> None:
    maker, b, c = (ids[s] for s in SITES)
    blob = seal_secret(maker, "hospital-2", b.cert_der(), "study-1", secret)

    assert open_secret(b, blob, "study-1", "hospital-1") == secret
    assert secret not in blob
    with pytest.raises(ProtocolError, match="recipient 'hospital-2', expected 'hospital-3'"):
        open_secret(c, blob, "study-1", "hospital-1")
    with pytest.raises(ProtocolError, match="study 'study-1', expected 'study-2'"):
        open_secret(b, blob, "study-2", "hospital-1")
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(ProtocolError, match="signature does not verify"):
        open_secret(b, tampered, "study-1", "hospital-1")
    # a key "from hospital-1" sealed by another federation's hospital-1 (made to accept
    # hospital-2's certificate so that it can seal to it at all)
    outsider = dataclasses.replace(foreign, ca=b.ca)
    forged = seal_secret(outsider, "hospital-2", b.cert_der(), "study-1", secret)
    with pytest.raises(ProtocolError, match="not a site certificate of this federation's CA"):
        open_secret(b, forged, "study-1", "hospital-1")
    # ... and a maker never seals to a certificate its CA did not issue (a hub's own key)
    with pytest.raises(ProtocolError, match="not a site certificate of this federation's CA"):
        seal_secret(maker, "hospital-2", foreign.cert_der(), "study-1", secret)
    with pytest.raises(ProtocolError, match="names site hospital-3"):
        seal_secret(maker, "hospital-2", c.cert_der(), "study-1", secret)


def test_the_relay_takes_a_key_only_from_the_maker_once_per_recipient(tmp_path: Path) -> None:
    relay = KeyRelay(tmp_path / "relay")
    relay.remember_certificate("hospital-2", b"cert-2")

    with pytest.raises(ProtocolError, match="only site hospital-1"):
        relay.put_sealed("st", SITES, "hospital-3", "hospital-2", b"blob")
    with pytest.raises(ValidationError, match="not another site"):
        relay.put_sealed("st", SITES, "hospital-1", "outsider", b"blob")
    with pytest.raises(KeyRelayNotFound):
        relay.get_sealed("st", "hospital-2")
    relay.put_sealed("st", SITES, "hospital-1", "hospital-2", b"blob")
    relay.put_sealed("st", SITES, "hospital-1", "hospital-2", b"blob")  # same: idempotent
    with pytest.raises(ProtocolError, match="never replaced"):
        relay.put_sealed("st", SITES, "hospital-1", "hospital-2", b"other")
    assert relay.get_sealed("st", "hospital-2") == b"blob"
    assert relay.certificates("st", SITES) == {"hospital-2": {"cert": "Y2VydC0y",
                                                              "sealed": True}}
    with pytest.raises(ValidationError, match="invalid study"):
        relay.get_sealed("../../etc", "hospital-2")


# --- a node's key source (the hub's relay played by a KeyRelay in memory) ---------------------

class _Hub:
    """Just enough of the hub's key endpoints, over a real :class:`KeyRelay`."""

    def __init__(self, relay: KeyRelay, caller: str) -> None:
        self.relay, self.caller = relay, caller

    def __call__(self, method: str, path: str, content: bytes = b"", **_: object) -> object:
        from fedcare.node.hub_link import HubResponse

        study = path.split("/")[4]
        if path.endswith("/certs"):
            body = json.dumps(self.relay.certificates(study, SITES)).encode()
            return HubResponse(200, {}, body)
        if method == "PUT":
            self.relay.put_sealed(study, SITES, self.caller, path.rsplit("/", 1)[1], content)
            return HubResponse(204, {}, b"")
        try:
            return HubResponse(200, {}, self.relay.get_sealed(study, self.caller))
        except KeyRelayNotFound:
            return HubResponse(404, {}, b"")


def test_the_maker_seals_the_study_key_to_each_site_and_they_all_hold_it(
        ids: dict[str, SiteIdentity], tmp_path: Path) -> None:
    from fedcare.node.ckks_keys import SECRET_FILE, RelayKeys

    relay = KeyRelay(tmp_path / "hub")
    late = RelayKeys(_Hub(relay, "hospital-2"), ids["hospital-2"], SITES, tmp_path / "2",
                     wait=0)
    with pytest.raises(ProtocolError, match="site hospital-1 makes it and must be online"):
        late.context("st")  # the maker has not made it yet
    for s in ("hospital-2", "hospital-3"):  # what hello does at the hub
        relay.remember_certificate(s, ids[s].cert_der())

    maker = RelayKeys(_Hub(relay, "hospital-1"), ids["hospital-1"], SITES, tmp_path / "1")
    made = maker.context("st")
    others = [RelayKeys(_Hub(relay, s), ids[s], SITES, tmp_path / s[-1], wait=0).context("st")
              for s in ("hospital-2", "hospital-3")]

    secret = (tmp_path / "1" / SECRET_FILE).read_bytes()
    assert all(o.is_private and o.fingerprint == made.fingerprint for o in others)
    for folder in ("1", "2", "3"):
        path = tmp_path / folder / SECRET_FILE
        assert path.read_bytes() == secret and path.stat().st_mode & 0o077 == 0
    from tests.keyscan import find_secrets

    assert find_secrets(tmp_path / "hub") == {}  # the relay holds only sealed copies
