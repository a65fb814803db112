"""Secure aggregation: the hub learns only the sum of the sites' vectors.

Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
CCS 2017 (complete graph, dropout recovery by Shamir-shared mask keys), and the sparse-graph
SecAgg+ of Bell et al., CCS 2020, as pure state machines without I/O::

    cfg = SecAggConfig(sites=..., threshold=t, vector_length=L, clip=1.0, frac_bits=16)
    clients = {u: SecAggClient(cfg, u) for u in cfg.sites}
    srv = SecAggServer(cfg)
    bcast = srv.collect_keys({u: c.advertise_keys() for u, c in clients.items()})
    routed = srv.collect_shares({u: clients[u].share_keys(bcast[u]) for u in bcast})
    request = srv.collect_masked({u: clients[u].masked_input(x[u], routed[u]) for u in routed})
    result = srv.finish({u: clients[u].unmask(request) for u in request.survivors})
"""

from __future__ import annotations

from fedcare.privacy.secagg.client import ClientState, SecAggClient
from fedcare.privacy.secagg.config import GraphKind, SecAggConfig, find_degree
from fedcare.privacy.secagg.encoding import decode, encode
from fedcare.privacy.secagg.messages import (
    AdvertiseKeys,
    AggregateResult,
    KeysBroadcast,
    MaskedInput,
    ShareBundle,
    ShareDelivery,
    UnmaskRequest,
    UnmaskResponse,
)
from fedcare.privacy.secagg.server import SecAggServer, ServerState

__all__ = [
    "AdvertiseKeys",
    "AggregateResult",
    "ClientState",
    "GraphKind",
    "KeysBroadcast",
    "MaskedInput",
    "SecAggClient",
    "SecAggConfig",
    "SecAggServer",
    "ServerState",
    "ShareBundle",
    "ShareDelivery",
    "UnmaskRequest",
    "UnmaskResponse",
    "decode",
    "encode",
    "find_degree",
]
