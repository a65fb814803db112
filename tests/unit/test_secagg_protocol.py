"""SecAgg end to end: exact sums, dropout recovery, aborts, SecAgg+, what the hub can see."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedcare.core.errors import ProtocolError, ValidationError
from fedcare.privacy.secagg import (
    AdvertiseKeys,
    ClientState,
    MaskedInput,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    ServerState,
    ShareBundle,
    ShareDelivery,
    UnmaskRequest,
    UnmaskResponse,
    encode,
)


def _sites(n: int) -> list[str]:
    return [f"site-{i}" for i in range(n)]


def run_round(cfg: SecAggConfig, x: dict[str, np.ndarray], *, drop_before_shares=(),
              drop_before_masked=(), drop_before_unmask=()):
    """Drive one round in memory; returns (result, server, clients)."""
    clients = {u: SecAggClient(cfg, u) for u in cfg.sites}
    srv = SecAggServer(cfg)
    bcast = srv.collect_keys({u: c.advertise_keys() for u, c in clients.items()})
    routed = srv.collect_shares({u: clients[u].share_keys(bcast[u]) for u in bcast
                                 if u not in drop_before_shares})
    request = srv.collect_masked({u: clients[u].masked_input(x[u], routed[u]) for u in routed
                                  if u not in drop_before_masked})
    result = srv.finish({u: clients[u].unmask(request) for u in request.survivors
                         if u not in drop_before_unmask})
    return result, srv, clients


@st.composite
def rounds(draw):
    n = draw(st.integers(2, 8))
    t = draw(st.integers(n // 2 + 1, n))
    length = draw(st.sampled_from([0, 1, 2, 7, 50]))
    frac = draw(st.sampled_from([0, 8, 16]))
    mod = draw(st.sampled_from([32, 64]))
    clip = draw(st.sampled_from([1.0, 100.0]))
    cfg = SecAggConfig(sites=_sites(n), threshold=t, vector_length=length, clip=clip,
                       frac_bits=frac, mod_bits=mod, round_id=draw(st.integers(0, 2**40)))
    value = st.one_of(st.just(0.0), st.just(clip), st.just(-clip),
                      st.floats(-clip, clip, allow_nan=False))
    x = {u: np.array(draw(st.lists(value, min_size=length, max_size=length)), np.float64)
         for u in cfg.sites}
    return cfg, x


@given(rounds())
def test_masked_sum_equals_plain_sum_within_quantisation(case):
    cfg, x = case
    result, _, _ = run_round(cfg, x)
    plain = np.sum([x[u] for u in cfg.sites], axis=0) if cfg.vector_length else np.zeros(0)
    assert result.sum.dtype == np.float64 and result.sum.shape == (cfg.vector_length,)
    assert np.all(np.abs(result.sum - plain) <= cfg.quantisation_bound)
    assert result.included == tuple(cfg.sites)


@given(n=st.integers(2, 8), length=st.integers(0, 50), data=st.data())
def test_integer_sums_are_exact(n, length, data):
    cfg = SecAggConfig(sites=_sites(n), threshold=n // 2 + 1, vector_length=length,
                       clip=1000.0, frac_bits=0)
    ints = st.integers(-1000, 1000)
    x = {u: np.array(data.draw(st.lists(ints, min_size=length, max_size=length)), np.float64)
         for u in cfg.sites}
    result, _, _ = run_round(cfg, x)
    np.testing.assert_array_equal(result.sum, np.sum([x[u] for u in cfg.sites], axis=0)
                                  if length else np.zeros(0))


@given(n=st.integers(3, 8), data=st.data())
def test_recovers_when_up_to_n_minus_t_drop_after_sharing(n, data):
    t = data.draw(st.integers(n // 2 + 1, n - 1))
    cfg = SecAggConfig(sites=_sites(n), threshold=t, vector_length=5, frac_bits=0, clip=50.0)
    dropped = data.draw(st.sets(st.sampled_from(cfg.sites), min_size=1, max_size=n - t))
    x = {u: np.full(5, float(i + 1)) for i, u in enumerate(cfg.sites)}
    result, _, _ = run_round(cfg, x, drop_before_masked=dropped)
    alive = [u for u in cfg.sites if u not in dropped]
    np.testing.assert_array_equal(result.sum, np.sum([x[u] for u in alive], axis=0))
    assert result.included == tuple(alive)


def test_site_dropping_after_advertise_is_excluded_cleanly():
    cfg = SecAggConfig(sites=_sites(5), threshold=3, vector_length=4, frac_bits=0, clip=9.0)
    x = {u: np.full(4, float(i)) for i, u in enumerate(cfg.sites)}
    result, _, _ = run_round(cfg, x, drop_before_shares={"site-1"},
                             drop_before_masked={"site-4"})
    np.testing.assert_array_equal(result.sum, np.full(4, 0.0 + 2 + 3))
    assert result.included == ("site-0", "site-2", "site-3")


def test_survivor_silent_at_unmask_is_still_included_if_enough_answer():
    cfg = SecAggConfig(sites=_sites(5), threshold=3, vector_length=3, frac_bits=0, clip=9.0)
    x = {u: np.full(3, float(i)) for i, u in enumerate(cfg.sites)}
    result, _, _ = run_round(cfg, x, drop_before_unmask={"site-2"})
    np.testing.assert_array_equal(result.sum, np.full(3, 10.0))


@pytest.mark.parametrize("stage", ["shares", "masked", "unmask"])
def test_below_threshold_aborts_naming_the_stage(stage):
    cfg = SecAggConfig(sites=_sites(5), threshold=3, vector_length=2, frac_bits=0, clip=9.0)
    x = {u: np.ones(2) for u in cfg.sites}
    three = {"site-0", "site-1", "site-2"}
    kwargs = {f"drop_before_{stage}": three}
    name = {"shares": "share_keys", "masked": "masked_input", "unmask": "unmask"}[stage]
    with pytest.raises(ProtocolError, match=f"{name}: only 2 of 5 .*threshold is 3"):
        run_round(cfg, x, **kwargs)


def test_below_threshold_at_advertise_aborts():
    cfg = SecAggConfig(sites=_sites(3), threshold=2, vector_length=1)
    srv = SecAggServer(cfg)
    with pytest.raises(ProtocolError, match="advertise_keys: only 1"):
        srv.collect_keys({"site-0": SecAggClient(cfg, "site-0").advertise_keys()})
    assert srv.state is ServerState.ABORTED
    with pytest.raises(ProtocolError, match="state aborted"):
        srv.collect_shares({})


@pytest.mark.parametrize("degree", [4, 6])
def test_secagg_plus_graph_gives_the_same_sum(degree):
    sites = _sites(10)
    x = {u: np.arange(6, dtype=np.float64) * (i - 4) for i, u in enumerate(sites)}
    full = SecAggConfig(sites=sites, threshold=7, vector_length=6, frac_bits=0, clip=100.0)
    sparse = SecAggConfig(sites=sites, threshold=7, vector_length=6, frac_bits=0, clip=100.0,
                          graph="secagg+", degree=degree, graph_seed=b"public")
    assert not sparse.is_complete
    assert all(len(sparse.neighbours(u)) == degree for u in sites)
    dropped = {"site-3"} if degree == 4 else {"site-3", "site-8"}
    r_full, _, _ = run_round(full, x, drop_before_masked=dropped)
    r_sparse, _, _ = run_round(sparse, x, drop_before_masked=dropped)
    np.testing.assert_array_equal(r_full.sum, r_sparse.sum)
    assert r_full.included == r_sparse.included


def test_secagg_plus_too_many_drops_in_one_neighbourhood_aborts():
    sites = _sites(10)
    cfg = SecAggConfig(sites=sites, threshold=6, vector_length=2, graph="secagg+", degree=4)
    victim = sites[0]
    nb = cfg.neighbours(victim)  # 5 holders, t_k = 3: drop 3 of them
    x = {u: np.zeros(2) for u in sites}
    with pytest.raises(ProtocolError, match="unmask: only 2 shares"):
        run_round(cfg, x, drop_before_unmask=set(nb[:3]))


def test_server_never_holds_a_single_encoded_input_and_masked_looks_uniform():
    cfg = SecAggConfig(sites=_sites(4), threshold=3, vector_length=4096, frac_bits=0,
                       clip=10.0)
    x = {u: np.full(4096, 7.0) for u in cfg.sites}  # constant input
    clients = {u: SecAggClient(cfg, u) for u in cfg.sites}
    srv = SecAggServer(cfg)
    seen: list[np.ndarray] = []

    def snapshot() -> None:
        for v in vars(srv).values():
            if isinstance(v, np.ndarray):
                seen.append(v.copy())

    bcast = srv.collect_keys({u: c.advertise_keys() for u, c in clients.items()})
    routed = srv.collect_shares({u: clients[u].share_keys(bcast[u]) for u in bcast})
    masked = {u: clients[u].masked_input(x[u], routed[u]) for u in routed}
    req = srv.collect_masked(masked)
    snapshot()
    result = srv.finish({u: clients[u].unmask(req) for u in req.survivors})
    snapshot()
    np.testing.assert_array_equal(result.sum, np.full(4096, 28.0))
    encoded = encode(x["site-0"], cfg)
    arrays = seen + [m.masked for m in masked.values()]
    assert not any(np.array_equal(a, encoded) for a in arrays)
    # A masked constant vector looks uniform on Z_2^32: mean ~ 2^31, top bit ~ half set.
    m = masked["site-0"].masked.astype(np.float64)
    assert abs(m.mean() / 2**31 - 1) < 0.05
    assert 0.45 < float((masked["site-0"].masked >> 31).mean()) < 0.55
    assert len(np.unique(masked["site-0"].masked)) > 4000
    # ...and the server kept no individual masked vector after summing.
    assert srv._total is None and srv.state is ServerState.DONE


def _through_sharing(cfg: SecAggConfig
                     ) -> tuple[dict[str, SecAggClient], SecAggServer, dict[str, ShareDelivery]]:
    """Every site of ``cfg`` through key advertisement and share exchange."""
    clients = {u: SecAggClient(cfg, u) for u in cfg.sites}
    srv = SecAggServer(cfg)
    keys = srv.collect_keys({u: c.advertise_keys() for u, c in clients.items()})
    return clients, srv, srv.collect_shares({u: clients[u].share_keys(keys[u]) for u in keys})


def test_ciphertext_for_another_pair_fails_authentication_naming_the_sender():
    cfg = SecAggConfig(sites=_sites(3), threshold=2, vector_length=2)
    clients, _, routed = _through_sharing(cfg)
    # site-2 receives, labelled as from site-1, the ciphertext site-0 sent it.
    swapped = dict(routed["site-2"].ciphertexts)
    swapped["site-1"] = routed["site-2"].ciphertexts["site-0"]
    with pytest.raises(ProtocolError, match=r"\[site site-1\] encrypted share failed"):
        clients["site-2"].masked_input(np.zeros(2), ShareDelivery("site-2", swapped))
    assert clients["site-2"].state is ClientState.ABORTED


def test_ciphertext_from_another_round_fails_authentication():
    sites = _sites(3)
    cfg1 = SecAggConfig(sites=sites, threshold=2, vector_length=2, round_id=1)
    cfg2 = SecAggConfig(sites=sites, threshold=2, vector_length=2, round_id=2)
    # Same keys in both rounds (seeded rng) so only the round binding differs.
    def make(cfg):
        clients = {u: SecAggClient(cfg, u, rng=_det_rng(u)) for u in sites}
        srv = SecAggServer(cfg)
        b = srv.collect_keys({u: c.advertise_keys() for u, c in clients.items()})
        return clients, srv.collect_shares({u: clients[u].share_keys(b[u]) for u in b})
    _, r1 = make(cfg1)
    c2, _ = make(cfg2)
    old = ShareDelivery("site-2", dict(r1["site-2"].ciphertexts))
    with pytest.raises(ProtocolError, match="encrypted share failed authentication"):
        c2["site-2"].masked_input(np.zeros(2), old)


def _det_rng(label: str):
    gen = np.random.default_rng(abs(hash(label)) % 2**32)
    return lambda k: gen.bytes(k)


def test_client_refuses_to_reveal_both_shares_of_a_peer():
    cfg = SecAggConfig(sites=_sites(4), threshold=3, vector_length=2)
    clients, _, routed = _through_sharing(cfg)
    for u in cfg.sites:
        clients[u].masked_input(np.zeros(2), routed[u])
    evil = UnmaskRequest(("site-0", "site-1", "site-2", "site-3"), ("site-3",))
    with pytest.raises(ProtocolError, match="both the self-mask share and the key share of "
                                            "'site-3'"):
        clients["site-0"].unmask(evil)
    assert clients["site-0"].state is ClientState.ABORTED
    honest = UnmaskRequest(("site-0", "site-1", "site-2", "site-3"), ())
    with pytest.raises(ProtocolError, match="state aborted"):
        clients["site-0"].unmask(honest)  # no second chance after a refused request
    # A second request after a successful answer is refused too (one answer per round).
    clients["site-1"].unmask(honest)
    with pytest.raises(ProtocolError, match="state done"):
        clients["site-1"].unmask(UnmaskRequest(("site-0", "site-1", "site-2"), ("site-3",)))


def test_client_refuses_request_that_omits_a_neighbour_or_itself():
    cfg = SecAggConfig(sites=_sites(4), threshold=3, vector_length=1)
    clients, _, routed = _through_sharing(cfg)
    for u in cfg.sites:
        clients[u].masked_input(np.zeros(1), routed[u])
    with pytest.raises(ProtocolError, match="neither a survivor nor dropped"):
        clients["site-0"].unmask(UnmaskRequest(("site-0", "site-1", "site-2"), ()))
    with pytest.raises(ProtocolError, match="not listed as a survivor"):
        clients["site-1"].unmask(UnmaskRequest(("site-2", "site-3", "site-0"), ("site-1",)))


def test_replayed_advertise_keys_are_refused():
    cfg = SecAggConfig(sites=_sites(3), threshold=2, vector_length=1)
    a = SecAggClient(cfg, "site-0").advertise_keys()
    b = SecAggClient(cfg, "site-1").advertise_keys()
    # Same public keys presented for two sites.
    with pytest.raises(ProtocolError, match="already advertised by site-0"):
        SecAggServer(cfg).collect_keys({"site-0": a, "site-1": AdvertiseKeys("site-1", a.c_pk,
                                                                             a.s_pk)})
    # site-0's message replayed by site-2.
    with pytest.raises(ProtocolError, match="claims to come from 'site-0'"):
        SecAggServer(cfg).collect_keys({"site-0": a, "site-1": b, "site-2": a})
    # A second collect_keys call (the same site advertising twice) is a state error.
    srv = SecAggServer(cfg)
    srv.collect_keys({"site-0": a, "site-1": b})
    with pytest.raises(ProtocolError, match="state collecting_shares"):
        srv.collect_keys({"site-0": a})
    # A message from the previous round does not even decode.
    old = SecAggConfig(sites=_sites(3), threshold=2, vector_length=1, round_id=7)
    with pytest.raises(ProtocolError, match="belongs to round 7"):
        AdvertiseKeys.from_bytes(a.to_bytes(old), cfg=cfg)


def test_client_refuses_a_broadcast_with_substituted_or_duplicate_keys():
    cfg = SecAggConfig(sites=_sites(3), threshold=2, vector_length=1)
    clients = {u: SecAggClient(cfg, u) for u in cfg.sites}
    srv = SecAggServer(cfg)
    b = srv.collect_keys({u: c.advertise_keys() for u, c in clients.items()})
    keys = dict(b["site-0"].keys)
    dup = dict(keys)
    dup["site-2"] = keys["site-1"]
    with pytest.raises(ProtocolError, match="public key reused"):
        clients["site-0"].share_keys(type(b["site-0"])(dup))
    sub = dict(b["site-1"].keys)
    sub["site-1"] = keys["site-0"]
    with pytest.raises(ProtocolError, match="own public keys"):
        clients["site-1"].share_keys(type(b["site-1"])(sub))


def _to_shares_stage(cfg, advertising):
    clients = {u: SecAggClient(cfg, u) for u in cfg.sites}
    srv = SecAggServer(cfg)
    b = srv.collect_keys({u: clients[u].advertise_keys() for u in advertising})
    return srv, {u: clients[u].share_keys(b[u]) for u in b}


def test_server_refuses_shares_from_outside_the_round_or_from_dropped_sites():
    cfg = SecAggConfig(sites=_sites(3), threshold=2, vector_length=3)
    srv, bundles = _to_shares_stage(cfg, ["site-0", "site-1"])
    with pytest.raises(ProtocolError, match="'mallory', which is not part of this round"):
        srv.collect_shares({**bundles, "mallory": bundles["site-0"]})
    assert srv.state is ServerState.ABORTED
    srv, bundles = _to_shares_stage(cfg, ["site-0", "site-1"])
    with pytest.raises(ProtocolError, match="site-2 dropped out at an earlier stage"):
        srv.collect_shares({**bundles, "site-2": bundles["site-0"]})
    srv, bundles = _to_shares_stage(cfg, cfg.sites)
    short = ShareBundle("site-0", {"site-1": bundles["site-0"].ciphertexts["site-1"]})
    with pytest.raises(ProtocolError, match="'site-2' is missing"):
        srv.collect_shares({**bundles, "site-0": short})


@pytest.mark.parametrize("masked", [np.zeros(2, np.uint32), np.zeros(3, np.uint64),
                                    np.zeros(3, np.float64), np.zeros((3, 1), np.uint32)])
def test_server_refuses_masked_vector_of_wrong_length_or_dtype(masked):
    cfg = SecAggConfig(sites=_sites(3), threshold=2, vector_length=3)
    srv, bundles = _to_shares_stage(cfg, cfg.sites)
    srv.collect_shares(bundles)
    with pytest.raises(ValidationError, match=r"\[site site-0\] masked_input: masked"):
        srv.collect_masked({"site-0": MaskedInput("site-0", masked),
                            "site-1": MaskedInput("site-1", np.zeros(3, np.uint32))})
    assert srv.state is ServerState.ABORTED


def test_server_refuses_a_response_with_both_shares_and_corrupted_shares():
    cfg = SecAggConfig(sites=_sites(4), threshold=3, vector_length=2, frac_bits=0, clip=5.0)
    clients, srv, routed = _through_sharing(cfg)
    req = srv.collect_masked({u: clients[u].masked_input(np.ones(2), routed[u])
                              for u in routed if u != "site-3"})
    resp = {u: clients[u].unmask(req) for u in req.survivors}
    r0 = resp["site-0"]
    both = UnmaskResponse("site-0", r0.self_mask_shares,
                          {**r0.key_shares, "site-1": 5})
    with pytest.raises(ProtocolError, match="both shares of 'site-1'"):
        _clone_unmask_stage(srv).finish({**resp, "site-0": both})
    # Exactly t key shares of site-3, one corrupted: the rebuilt key fails its public key.
    bad_key = UnmaskResponse("site-0", r0.self_mask_shares, {"site-3": 12345})
    with pytest.raises(ProtocolError, match=r"\[site site-3\] unmask: reconstructed mask key"):
        srv.finish({**resp, "site-0": bad_key})


def _clone_unmask_stage(srv: SecAggServer) -> SecAggServer:
    clone = SecAggServer(srv.cfg)
    clone.__dict__.update({k: (v.copy() if isinstance(v, np.ndarray) else v)
                           for k, v in srv.__dict__.items()})
    return clone


def test_wrong_state_calls_are_refused_without_changing_state():
    cfg = SecAggConfig(sites=_sites(2), threshold=2, vector_length=1)
    c = SecAggClient(cfg, "site-0")
    with pytest.raises(ProtocolError, match="share_keys called in state new"):
        c.share_keys(None)  # type: ignore[arg-type]
    assert c.state is ClientState.NEW
    with pytest.raises(ProtocolError, match="not part of"):
        SecAggClient(cfg, "site-9")
    srv = SecAggServer(cfg)
    with pytest.raises(ProtocolError, match="finish called in state collecting_keys"):
        srv.finish({})


def test_client_refuses_out_of_range_or_nonfinite_input():
    cfg = SecAggConfig(sites=_sites(2), threshold=2, vector_length=2, clip=1.0)
    for bad in (np.array([0.0, 1.5]), np.array([np.nan, 0.0]), np.zeros(3)):
        clients, _, routed = _through_sharing(cfg)
        with pytest.raises(ValidationError, match="site-0"):
            clients["site-0"].masked_input(bad, routed["site-0"])
        assert clients["site-0"].state is ClientState.ABORTED
