"""Secure aggregation cost: 10 sites x 1 M float32 values, threshold 7, 0 and 2 dropouts.

    python benchmarks/secagg.py [--repeats 3] [--length 1000000]

Runs the pure protocol (``fedcare.privacy.secagg``, no network) for the complete graph
(Bonawitz et al. 2017) and SecAgg+ (Bell et al. 2020; degree 6 forced, because for 10 sites
the degree rule picks the complete graph). Per stage: median over repeats of the mean time per
client and the hub's time; bytes each client sends/receives (``to_bytes``); next to the plain
float32 sum of the 10 vectors. "critical path" = hub stages + mean client stages (sites run in
parallel in a real federation); "all work" = hub + every client (one-machine simulation).
Dropouts leave after ShareKeys (they send no masked input), the worst case for the hub.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import numpy as np

from fedcare.privacy.secagg import SecAggClient, SecAggConfig, SecAggServer

SITES = tuple(f"site-{i:02d}" for i in range(10))
STAGES = ("advertise", "share_keys", "masked_input", "unmask")
HUB = ("collect_keys", "collect_shares", "collect_masked", "finish")


def _timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def one_round(cfg: SecAggConfig, x: dict[str, np.ndarray], drop: set[str]):
    cl: dict[str, list[float]] = defaultdict(list)
    hub: dict[str, float] = {}
    sent: dict[str, int] = defaultdict(int)
    recv: dict[str, int] = defaultdict(int)
    clients = {u: SecAggClient(cfg, u) for u in cfg.sites}
    srv = SecAggServer(cfg)

    def client_stage(stage, u, fn, *args):
        out, dt = _timed(fn, *args)
        cl[stage].append(dt)
        sent[u] += len(out.to_bytes(cfg))
        return out

    adv = {u: client_stage("advertise", u, c.advertise_keys) for u, c in clients.items()}
    bcast, hub["collect_keys"] = _timed(srv.collect_keys, adv)
    for u, m in bcast.items():
        recv[u] += len(m.to_bytes(cfg))
    bundles = {u: client_stage("share_keys", u, clients[u].share_keys, bcast[u]) for u in bcast}
    routed, hub["collect_shares"] = _timed(srv.collect_shares, bundles)
    for u, m in routed.items():
        recv[u] += len(m.to_bytes(cfg))
    masked = {u: client_stage("masked_input", u, clients[u].masked_input, x[u], routed[u])
              for u in routed if u not in drop}
    req, hub["collect_masked"] = _timed(srv.collect_masked, masked)
    resp = {}
    for u in req.survivors:
        recv[u] += len(req.to_bytes(cfg))
        resp[u] = client_stage("unmask", u, clients[u].unmask, req)
    result, hub["finish"] = _timed(srv.finish, resp)
    plain = np.sum([x[u] for u in req.survivors], axis=0, dtype=np.float64)
    err = float(np.abs(result.sum - plain).max())
    survivors = list(req.survivors)
    return ({s: statistics.mean(v) for s, v in cl.items()}, hub,
            statistics.mean(sent[u] for u in survivors),
            statistics.mean(recv[u] for u in survivors), err)


def plain_sum_time(x: dict[str, np.ndarray], repeats: int) -> float:
    stack = [x[u] for u in SITES]
    out = np.zeros_like(stack[0])
    ts = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        out[:] = 0
        for v in stack:
            np.add(out, v, out=out)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts[1:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--length", type=int, default=1_000_000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = {u: np.clip(rng.standard_normal(args.length, dtype=np.float32) * 0.1, -1, 1)
         for u in SITES}
    plain = plain_sum_time(x, args.repeats)
    print(f"10 sites x {args.length:,} float32, threshold 7, mod 2^32, 16 fractional bits; "
          f"plain float32 sum of 10 vectors: {plain * 1e3:.1f} ms; plain upload per site "
          f"{4 * args.length / 1e6:.2f} MB\n")
    head = ("| graph | drops | " + " | ".join(f"site {s} ms" for s in STAGES) + " | "
            + " | ".join(f"hub {s} ms" for s in HUB)
            + " | critical path ms | all work ms | MB sent/site | KB recv/site | max err |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for graph, degree in (("complete", None), ("secagg+", 6)):
        cfg = SecAggConfig(sites=SITES, threshold=7, vector_length=args.length, clip=1.0,
                           frac_bits=16, mod_bits=32, graph=graph, degree=degree,
                           graph_seed=b"bench")
        for drop in (set(), {SITES[3], SITES[7]}):
            runs = [one_round(cfg, x, drop) for _ in range(args.repeats)]
            cl = {s: statistics.median(r[0][s] for r in runs) for s in STAGES}
            hub = {s: statistics.median(r[1][s] for r in runs) for s in HUB}
            crit = sum(cl.values()) + sum(hub.values())
            n_mask = len(SITES) - len(drop)
            work = (sum(hub.values()) + len(SITES) * (cl["advertise"] + cl["share_keys"])
                    + n_mask * (cl["masked_input"] + cl["unmask"]))
            label = f"{graph} (k={len(cfg.neighbours(SITES[0]))}, t_k={cfg.share_threshold})"
            print(f"| {label} | {len(drop)} | "
                  + " | ".join(f"{cl[s] * 1e3:.2f}" for s in STAGES) + " | "
                  + " | ".join(f"{hub[s] * 1e3:.2f}" for s in HUB)
                  + f" | {crit * 1e3:.0f} | {work * 1e3:.0f} | {runs[0][2] / 1e6:.2f}"
                  f" | {runs[0][3] / 1e3:.1f} | {max(r[4] for r in runs):.1e} |")


if __name__ == "__main__":
    main()
