"""The floor under the network benchmark: what one round's bytes cost on this machine alone.

The same shape as ``benchmarks/network.py`` - a hub and N site processes on loopback, the
federation's real certificates (mutual TLS), a 4 MB model out to every site and a 4 MB
answer back - doing only what every round must do with those bytes: TLS both ways, and a
sha256 made by the sender and checked by the receiver. No HTTP, no database, no training, no
serialization: Python's ``ssl`` (OpenSSL) on blocking sockets, one thread per site at the
hub, the model hashed once, receive buffers reused. Hand-written on purpose (it measures the
cost under any framework, so it must not use one).

It then runs the in-memory engine on the network benchmark's study and prints the lower bound
the floor puts under the networked engine's overhead here: a networked round does at least the
in-memory engine's work plus the floor's, on ``os.cpu_count()`` cores, so it cannot be shorter
than (in-memory CPU + floor CPU) / cores, however good the rest of the implementation. A
second bound adds what the issue's durability asks of the hub per round, measured through the
hub's own store: the tasks, deliveries and replies it records (so that a hub killed with
``kill -9`` resumes without counting a reply twice), and the round's checkpoint, which the
next round has to wait for.

Run:  python benchmarks/transport_floor.py [--sites 10] [--rounds 30] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import socket
import ssl
import statistics
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from network import in_memory, write_sites  # noqa: E402

from fedcare.hub.provisioning import create_federation  # noqa: E402
from fedcare.pki.trust import client_ssl_context, server_ssl_context  # noqa: E402

SIZE = 4_000_000  # the network benchmark's model: ~1.0 M float32 parameters
HEAD = struct.Struct(">I32s")  # body length, sha256 of the body


def _recv_into(sock: ssl.SSLSocket, buf: bytearray, n: int) -> memoryview:
    view = memoryview(buf)[:n]
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if not k:
            raise EOFError("peer closed the connection")
        got += k
    return view


def _recv_message(sock: ssl.SSLSocket, head: bytearray, body: bytearray) -> memoryview | None:
    n, digest = HEAD.unpack(_recv_into(sock, head, HEAD.size))
    if n == 0:
        return None
    data = _recv_into(sock, body, n)
    if hashlib.sha256(data).digest() != digest:
        raise ValueError("sha256 mismatch")
    return data


def _site(kit: Path, port: int, warm: int, cpu: Any) -> None:
    """A site: receive the model, check its sha256, answer with 4 MB and their sha256.
    Reports the CPU it spent on the rounds after the first ``warm`` ones."""
    context = client_ssl_context(kit)
    head, body = bytearray(HEAD.size), bytearray(SIZE)
    seen, start = 0, 0.0
    with socket.create_connection(("127.0.0.1", port)) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        while (model := _recv_message(sock, head, body)) is not None:
            answer = model  # same size as a trained model; no training: this is the floor
            sock.sendall(HEAD.pack(len(answer), hashlib.sha256(answer).digest()))
            sock.sendall(answer)
            seen += 1
            if seen == warm:
                start = time.process_time()
    cpu.put(time.process_time() - start)


def floor(sites: int, rounds: int, work: Path) -> dict[str, float]:
    names = [f"site-{i}" for i in range(sites)]
    create_federation(work / "fed", hub_host="127.0.0.1", hub_port=1, sites=names,
                      site_kits=work / "kits")
    context = server_ssl_context(work / "fed" / "hub")
    context.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    warm = 3
    ctx = mp.get_context("fork")
    site_cpu = ctx.Queue()
    procs = [ctx.Process(target=_site, args=(work / "kits" / n, port, warm, site_cpu))
             for n in names]
    for p in procs:
        p.start()
    conns = [context.wrap_socket(listener.accept()[0], server_side=True) for _ in names]
    model = os.urandom(SIZE)
    model_head = HEAD.pack(SIZE, hashlib.sha256(model).digest())  # hashed once per round
    buffers = [(bytearray(HEAD.size), bytearray(SIZE)) for _ in conns]

    def exchange(i: int) -> None:
        conns[i].sendall(model_head)
        conns[i].sendall(model)
        _recv_message(conns[i], *buffers[i])

    walls: list[float] = []
    cpu0 = t0 = 0.0
    for r in range(rounds + warm):
        if r == warm:
            cpu0, t0 = time.process_time(), time.perf_counter()
        start = time.perf_counter()
        threads = [threading.Thread(target=exchange, args=(i,)) for i in range(len(conns))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        walls.append(time.perf_counter() - start)
    hub_cpu = (time.process_time() - cpu0) / rounds
    wall = (time.perf_counter() - t0) / rounds
    for c in conns:
        c.sendall(HEAD.pack(0, bytes(32)))
        c.close()
    used = sum(site_cpu.get(timeout=60) for _ in procs)
    for p in procs:
        p.join()
    return {"round_ms_median": 1000 * statistics.median(walls[warm:]),
            "round_ms_mean": 1000 * wall, "hub_cpu_ms": 1000 * hub_cpu,
            "sites_cpu_ms": 1000 * used / rounds}


def bookkeeping(sites: int, rounds: int, work: Path) -> dict[str, float]:
    """What the hub's state costs per round, through the hub's own store (SQLite): the
    round's tasks recorded, each delivery and each reply recorded (what lets a hub killed
    with kill -9 resume without counting a reply twice), and the round's checkpoint (the
    model and state blobs fsynced, then one transaction). The checkpoint is timed on the
    wall: the next round cannot start before it commits."""
    from datetime import timedelta

    from fedcare.core.messages import TaskKind
    from fedcare.hub.store import (
        BlobStore,
        Database,
        NewTask,
        ReplyRepo,
        StudyRepo,
        StudyStatus,
        TaskRepo,
    )

    db = Database.for_data_dir(work / "hub-state")
    db.migrate()
    blobs = BlobStore(work / "hub-state" / "blobs")
    names = [f"site-{i}" for i in range(sites)]
    with db.session() as s:
        study_id = StudyRepo(s).create("floor", {}, "0" * 64, names, rounds + 1).id
        StudyRepo(s).set_status(study_id, StudyStatus.RUNNING)
    cpu = checkpoint = 0.0
    models = [os.urandom(SIZE) for _ in range(rounds)]  # a new model a round, made untimed
    for r in range(1, rounds + 1):
        c = time.thread_time()
        with db.session() as s:
            StudyRepo(s).start_round(study_id, r)
            tasks = [NewTask(study_id, r, n, TaskKind.FIT, "a" * 64) for n in names]
            TaskRepo(s).create_many(tasks)
        for n, task in zip(names, tasks, strict=True):
            with db.session() as s:
                got = TaskRepo(s).next_pending_for(n, redeliver_after=timedelta(seconds=5),
                                                   among=[task.id])
                assert got is not None
            with db.session() as s:
                ReplyRepo(s).record(task.id, n, hashlib.sha256(task.id.encode()).hexdigest(),
                                    SIZE)
        cpu += time.thread_time() - c
        t = time.perf_counter()
        model_sha = blobs.put(models[r - 1])
        state_sha = blobs.put(json.dumps({"round": r}).encode())
        with db.session() as s:
            StudyRepo(s).complete_round(study_id, r, {"round": r}, model_sha, state_sha)
        checkpoint += time.perf_counter() - t
    return {"cpu_ms": 1000 * cpu / rounds, "checkpoint_ms": 1000 * checkpoint / rounds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fedcare-floor-"))
    try:
        f = floor(args.sites, args.rounds, work)
        wall_ms, cpu_ms, _ = in_memory(write_sites(work, 10, 500), 10)
        m = {"round_ms": wall_ms, "cpu_ms": cpu_ms}
        b = bookkeeping(args.sites, args.rounds, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cores = os.cpu_count() or 1
    bound = (m["cpu_ms"] + f["hub_cpu_ms"] + f["sites_cpu_ms"]) / cores - m["round_ms"]
    with_state = bound + b["cpu_ms"] / cores + b["checkpoint_ms"]
    result = {"sites": args.sites, "rounds": args.rounds, "cores": cores, "floor": f,
              "in_memory": m, "bookkeeping": b, "overhead_lower_bound_ms": bound,
              "overhead_lower_bound_with_state_ms": with_state}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "transport_floor.json").write_text(json.dumps(result, indent=2))
    md = ["# Transport floor", "",
          f"A hub and {args.sites} site processes on loopback with the federation's certificates "
          f"(mutual TLS), {SIZE / 1e6:.0f} MB out to every site and {SIZE / 1e6:.0f} MB back per "
          "round, sha256 made by the sender and checked by the receiver; nothing else. "
          f"{args.rounds} rounds on {cores} cores.", "",
          "| measure | value |", "|---|---|",
          f"| floor round (median) | {f['round_ms_median']:.0f} ms |",
          f"| floor CPU per round: hub | {f['hub_cpu_ms']:.0f} ms |",
          f"| floor CPU per round: all sites | "
          f"{f['sites_cpu_ms']:.0f} ms |",
          f"| in-memory engine, same study as network.py: round / CPU per round | "
          f"{m['round_ms']:.0f} ms / {m['cpu_ms']:.0f} ms |",
          f"| **lower bound on the networked engine's overhead here** "
          f"((in-memory CPU + floor CPU) / {cores} cores - in-memory round) | "
          f"**{bound:.0f} ms** |",
          f"| the hub's state per round, through its own store: tasks, deliveries and "
          f"replies recorded (CPU) / checkpoint (wall) | {b['cpu_ms']:.0f} ms / "
          f"{b['checkpoint_ms']:.0f} ms |",
          f"| **lower bound with that state** (+ its CPU / {cores} + the checkpoint) | "
          f"**{with_state:.0f} ms** |"]
    (args.out / "transport_floor.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
