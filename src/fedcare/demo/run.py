"""Orchestrate the demo federation: provision, start processes, run a study, compare, stop.

Everything is real: a federation CA and certificates, a hub and three nodes as separate
processes on loopback talking HTTPS with mutual TLS, a SQLite database. Baselines (each
hospital alone, all data pooled) are computed in simulation on the same files, which is only
possible because the demo owns all three hospitals' data.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from fedcare.core.errors import FedcareError
from fedcare.demo.hospitals import DATASET, HOSPITALS, LABEL, write_hospitals

ROUNDS = 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as fh:
        return subprocess.Popen([sys.executable, "-m", "fedcare.cli.main", *args], stdout=fh,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)


@contextmanager
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Every process started in here is stopped on the way out, Ctrl-C included."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for p in started:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for p in started:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _wait(what: str, check: Any, timeout: float, procs: list[subprocess.Popen[bytes]],
          logs: Path) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise FedcareError(f"a demo process exited early while waiting for {what}; "
                                   f"see the logs in {logs}")
        try:
            result = check()
            if result:
                return result
        except Exception:  # noqa: BLE001 (not up yet: keep polling until the deadline)
            pass
        time.sleep(0.3)
    raise FedcareError(f"timed out waiting for {what}; see the logs in {logs}")


def study_config(features: list[str]) -> dict[str, Any]:
    return {
        "study": {"name": "breast-cancer-federation", "seed": 0, "rounds": ROUNDS},
        "data": {"source": "federation", "dataset": DATASET, "label": LABEL,
                 "features": features, "test_fraction": 0.25, "standardize": True},
        "model": {"name": "logreg"},
        "train": {"local_epochs": 1, "batch_size": 16, "lr": 0.05},
        "strategy": {"name": "fedavg", "min_completed": 2},
        "run": {"round_timeout": 60, "evaluate_every": 1},
    }


def run_demo(out: Path, console: Console) -> dict[str, Any]:
    from fedcare.cli.network import HubClient, follow
    from fedcare.hub.provisioning import create_federation

    out.mkdir(parents=True, exist_ok=True)
    work = out / "federation"
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    features, files = write_hospitals(out)
    port = _free_port()
    create_federation(work, hub_host="127.0.0.1", hub_port=port, sites=list(HOSPITALS))
    for name, path in files.items():
        (out / f"{name}.toml").write_text(
            f'[datasets.{DATASET}]\npath = "{path.name}"\n\n[approval]\nstudies = "any"\n')
    console.print(f"Provisioned a federation in {work} (CA, hub certificate, 3 site kits); "
                  f"hub on https://127.0.0.1:{port}")
    with processes() as procs:
        procs.append(_start(["hub", "start", "--kit", str(work / "hub")], logs / "hub.log"))
        client = _wait("the hub", lambda: HubClient(work, None, None, None), 60, procs, logs)
        _wait("the hub", lambda: client.call("GET", "/v1/health"), 60, procs, logs)
        for name in HOSPITALS:
            procs.append(_start(["node", "start", "--kit", str(work / "sites" / name), "--data",
                                 str(out / f"{name}.toml")], logs / f"node-{name}.log"))
        console.print("Started the hub and 3 site nodes as separate processes "
                      f"(logs in {logs}); waiting for the nodes to connect...")
        _wait("3 nodes to connect",
              lambda: len(client.call("GET", "/v1/sites").json()) == len(HOSPITALS),
              120, procs, logs)
        doc = client.call("POST", "/v1/studies", json=study_config(features)).json()
        console.print(f"Submitted study {doc['study_id']} (content hash "
                      f"{doc['config_hash'][:16]}...) to {', '.join(doc['sites'])}")
        follow(client, doc["study_id"], poll=0.3)
        history = json.loads(client.call(
            "GET", f"/v1/studies/{doc['study_id']}/artifacts/history.json").content)
        model = client.call("GET", f"/v1/studies/{doc['study_id']}/artifacts/model.safetensors")
        (out / "model.safetensors").write_bytes(model.content)
    console.print("Stopped every process. Computing the baselines (simulation on the same "
                  "files)...")
    history["baselines"] = baselines(files, features)
    from fedcare.core.files import atomic_write
    from fedcare.reporting import write_report

    atomic_write(out / "history.json", json.dumps(history, indent=2).encode())
    write_report(history, out / "report.html")
    return history


def baselines(files: dict[str, Path], features: list[str]) -> dict[str, Any]:
    """Local-only and pooled baselines in simulation, same split and seed as the network run."""
    import fedcare

    cfg = {"study": {"name": "baselines", "seed": 0, "rounds": ROUNDS},
           "data": {"source": "files", "label": LABEL, "features": features,
                    "test_fraction": 0.25,
                    "site": [{"name": n, "path": str(p)} for n, p in files.items()]},
           "model": {"name": "logreg"},
           "train": {"local_epochs": 1, "batch_size": 16, "lr": 0.05},
           "baselines": {"local": True, "centralized": True},
           "run": {"evaluate_every": 0, "workers": 1}}
    return fedcare.simulate(cfg).baselines
