"""SecAgg messages: lossless arrays/bytes round trips and strict refusal of malformed input."""

from __future__ import annotations

import numpy as np
import pytest

from fedcare.core.errors import ProtocolError, ValidationError
from fedcare.privacy.secagg import (
    AdvertiseKeys,
    KeysBroadcast,
    MaskedInput,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    ShareBundle,
    ShareDelivery,
    UnmaskRequest,
    UnmaskResponse,
)
from fedcare.privacy.secagg.crypto import PRIME

CFG = SecAggConfig(sites=("a", "b", "c"), threshold=2, vector_length=4, round_id=3)


def _transcript(cfg: SecAggConfig = CFG):
    clients = {u: SecAggClient(cfg, u) for u in cfg.sites}
    srv = SecAggServer(cfg)
    adv = {u: c.advertise_keys() for u, c in clients.items()}
    bcast = srv.collect_keys(adv)
    bundles = {u: clients[u].share_keys(bcast[u]) for u in bcast}
    routed = srv.collect_shares(bundles)
    masked = {u: clients[u].masked_input(np.zeros(cfg.vector_length), routed[u])
              for u in routed if u != "c"}
    req = srv.collect_masked(masked)
    resp = {u: clients[u].unmask(req) for u in req.survivors}
    return [*adv.values(), *bcast.values(), *bundles.values(), *routed.values(),
            *masked.values(), req, *resp.values()]


def _equal(m1, m2) -> bool:
    if isinstance(m1, MaskedInput):
        return m1.site == m2.site and np.array_equal(m1.masked, m2.masked)
    return m1 == m2


def test_every_message_round_trips_through_arrays_and_bytes():
    msgs = _transcript()
    assert {type(m) for m in msgs} == {AdvertiseKeys, KeysBroadcast, ShareBundle, ShareDelivery,
                                       MaskedInput, UnmaskRequest, UnmaskResponse}
    for m in msgs:
        arrays = m.to_arrays(CFG)
        assert all(a.dtype in (np.uint8, np.uint32, np.int64) for a in arrays.values()), m
        assert _equal(type(m).from_arrays(arrays, cfg=CFG), m)
        assert _equal(type(m).from_bytes(m.to_bytes(CFG), cfg=CFG), m)


def test_empty_lists_and_zero_length_vectors_round_trip():
    cfg = SecAggConfig(sites=("a", "b"), threshold=2, vector_length=0)
    for m in (UnmaskRequest(("a", "b"), ()), UnmaskResponse("a", {}, {}),
              MaskedInput("a", np.zeros(0, np.uint32)), ShareDelivery("a", {})):
        assert _equal(type(m).from_bytes(m.to_bytes(cfg), cfg=cfg), m)


def _good(kind):
    return next(m for m in _transcript() if isinstance(m, kind)).to_arrays(CFG)


@pytest.mark.parametrize(("kind", "key", "bad", "match"), [
    (AdvertiseKeys, "c_pk", np.zeros(31, np.uint8), r"c_pk: shape must be \(32,\)"),
    (AdvertiseKeys, "site", np.array([7], np.uint32), "site index 7 is outside the round"),
    (AdvertiseKeys, "site", np.array([0], np.int64), "dtype must be uint32"),
    (KeysBroadcast, "sites", np.array([0, 0, 1], np.uint32), "listed twice"),
    (ShareBundle, "ciphertexts", np.zeros((2, 93), np.uint8), "shape must be"),
    (MaskedInput, "masked", np.zeros(5, np.uint32), r"masked: shape must be \(4,\)"),
    (MaskedInput, "masked", np.zeros(4, np.uint64), "dtype must be uint32"),
    (MaskedInput, "masked", np.zeros(4, np.float32), "dtype must be uint32"),
    (MaskedInput, "masked", [0, 0, 0, 0], "expected a numpy array"),
    (UnmaskRequest, "dropped", np.array([9], np.uint32), "outside the round"),
    (UnmaskResponse, "b_shares", np.full((2, 33), 255, np.uint8), "not a field element"),
])
def test_malformed_arrays_are_refused(kind, key, bad, match):
    d = _good(kind)
    d[key] = bad
    with pytest.raises(ValidationError, match=match):
        kind.from_arrays(d, cfg=CFG)


def test_missing_extra_or_non_dict_arrays_are_refused():
    d = _good(AdvertiseKeys)
    with pytest.raises(ValidationError, match="arrays must be exactly"):
        AdvertiseKeys.from_arrays({**d, "extra": np.zeros(1, np.uint8)}, cfg=CFG)
    del d["s_pk"]
    with pytest.raises(ValidationError, match="arrays must be exactly"):
        AdvertiseKeys.from_arrays(d, cfg=CFG)
    with pytest.raises(ValidationError, match="expected a dict"):
        AdvertiseKeys.from_arrays([1, 2], cfg=CFG)  # type: ignore[arg-type]


def test_garbage_bytes_and_other_rounds_are_refused():
    with pytest.raises(ValidationError, match="not a valid array blob"):
        AdvertiseKeys.from_bytes(b"\x00" * 40, cfg=CFG)
    with pytest.raises(ValidationError, match="expected bytes"):
        AdvertiseKeys.from_bytes("text", cfg=CFG)  # type: ignore[arg-type]
    d = _good(UnmaskRequest)
    d["round"] = np.array([4], np.int64)
    with pytest.raises(ProtocolError, match="belongs to round 4"):
        UnmaskRequest.from_arrays(d, cfg=CFG)


def test_share_values_at_the_field_boundary():
    ok = UnmaskResponse("a", {"b": PRIME - 1}, {})
    assert UnmaskResponse.from_bytes(ok.to_bytes(CFG), cfg=CFG) == ok
    d = ok.to_arrays(CFG)
    d["b_shares"] = np.frombuffer(PRIME.to_bytes(33, "little"), np.uint8).reshape(1, 33).copy()
    with pytest.raises(ValidationError, match="not a field element"):
        UnmaskResponse.from_arrays(d, cfg=CFG)
