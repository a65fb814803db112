"""Audit harness: a federation on loopback with hub and nodes as real processes.

The audit's ``fed.py`` adapted to today's APIs: each site's kit (with its key) is made at the
site (``create_federation(..., site_kits=DIR)``); the coordinator's folder keeps only public
parts; researchers use ``root/fed/researcher`` (URL, CA, token) with strict ``Bearer``
parsing. Every wait is bounded; :meth:`Fed.close` SIGKILLs every process this harness started,
by pid. Nodes can be started with test hooks (``HOOK``, a ``sitecustomize`` module on their
``PYTHONPATH``, as the audit's ``node_dump.py``): hold inside one protocol step until
released, count trainings and dump each trained model to ``hooks/fit-<site>-<study>-r<n>.npz``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from fedcare.hub.provisioning import create_federation

SITES = ("alpha", "beta", "gamma")
DATASET, RAW_DATASET, LABEL = "breast", "breast_raw", "target"
FEATURES = ["mean_radius", "mean_texture", "mean_perimeter", "mean_area", "mean_smoothness",
            "mean_concavity", "worst_radius", "worst_texture"]
#: Declared ranges of FEATURES (breast-cancer data), for DP feature statistics.
RANGES = {"mean_radius": [5, 30], "mean_texture": [5, 40], "mean_perimeter": [40, 200],
          "mean_area": [100, 2600], "mean_smoothness": [0.05, 0.17],
          "mean_concavity": [0, 0.45], "worst_radius": [7, 37], "worst_texture": [12, 50]}
START_TIMEOUT = 90.0
POLL = 0.2


class AuditError(RuntimeError):
    """A step of a case could not be carried out (not a finding: the harness failed)."""


HOOK = '''
import json, os, time
from pathlib import Path
D = os.environ.get("AUDIT_HOOKS")
if D:
    D = Path(D)
    SITE = os.environ["AUDIT_SITE"]
    from fedcare.engine import executor
    from fedcare.node import agent

    def _hold(task_id, kind, round_, when):
        spec = D / f"hold-{SITE}.json"
        try:
            want = json.loads(spec.read_text())
        except (OSError, ValueError):
            return
        if (want["kind"], want["round"], want["when"]) != (kind, round_, when):
            return
        spec.unlink()
        (D / f"held-{SITE}").write_text(task_id)
        release, deadline = D / f"release-{SITE}", time.monotonic() + 300
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        release.unlink(missing_ok=True)

    _run = executor.SiteExecutor.run

    def run(self, task):
        if not hasattr(self, "_audit_task"):
            learner, ex = self.learner, self

            class Counting:
                def __getattr__(self, name):
                    return getattr(learner, name)

                def fit(self, *a, **k):
                    t = ex._audit_task
                    with open(D / f"fits-{SITE}.log", "a") as fh:
                        fh.write(f"{t.study} {t.round}\\n")
                    out = learner.fit(*a, **k)
                    try:
                        import numpy as np
                        np.savez(D / f"fit-{SITE}-{t.study}-r{t.round}.npz",
                                 **{k2: np.asarray(v) for k2, v in out.parameters.items()})
                    except Exception:
                        pass
                    return out

            self.learner = Counting()
        self._audit_task = task
        _hold(task.task_id, task.kind.value, task.round, "in")
        return _run(self, task)

    executor.SiteExecutor.run = run
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)


class Proc:
    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.name, self.popen, self.log = name, popen, log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL this process (by its pid) and reap it."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)

    def tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def write_site_tables(folder: Path, sites: tuple[str, ...]) -> dict[str, dict[str, Path]]:
    """Disjoint slices of the breast-cancer table per site: standardized (DATASET) and raw."""
    from sklearn.datasets import load_breast_cancer

    raw = load_breast_cancer(as_frame=True).frame
    raw.columns = [c.replace(" ", "_") for c in raw.columns]
    raw = raw[[*FEATURES, LABEL]].copy()
    scaled = raw.copy()
    scaled[FEATURES] = (raw[FEATURES] - raw[FEATURES].mean()) / raw[FEATURES].std(ddof=0)
    order = np.random.default_rng(0).permutation(len(raw))
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, dict[str, Path]] = {DATASET: {}, RAW_DATASET: {}}
    for i, site in enumerate(sites):
        rows = order[i::len(sites)]
        for name, frame in ((DATASET, scaled), (RAW_DATASET, raw)):
            path = folder / f"{site}-{name}.csv"
            frame.iloc[rows].to_csv(path, index=False)
            paths[name][site] = path
    return paths


def study(name: str, rounds: int = 2, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "study": {"name": name, "seed": 7, "rounds": rounds},
        "data": {"source": "federation", "dataset": DATASET, "label": LABEL,
                 "features": list(FEATURES), "standardize": False, "test_fraction": 0.2},
        "model": {"name": "logreg"},
        "train": {"local_epochs": 1, "batch_size": 16, "lr": 0.1},
        "strategy": {"name": "fedavg"},
        "baselines": {"local": False, "centralized": False},
        "run": {"round_timeout": 60},
    }
    for key, value in over.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


class Fed:
    """A provisioned federation in ``root``; hub and nodes as subprocesses."""

    def __init__(self, root: Path, sites: tuple[str, ...] = SITES) -> None:
        self.root, self.sites, self.port = root, sites, free_port()
        self.procs: list[Proc] = []
        self.hub: Proc | None = None
        self.nodes: dict[str, Proc] = {}
        self.fed = create_federation(root / "fed", hub_host="127.0.0.1", hub_port=self.port,
                                     sites=list(sites), site_kits=root / "site-kits")
        self.tables = write_site_tables(root / "data", sites)
        self.node_configs: dict[str, Path] = {}
        for site in sites:
            conf = root / "data" / f"{site}.toml"
            conf.write_text("".join(f'[datasets.{n}]\npath = "{f[site].name}"\n\n'
                                    for n, f in self.tables.items())
                            + '[approval]\nstudies = "any"\n')
            self.node_configs[site] = conf
        self.hooks = root / "hooks"
        self.hooks.mkdir()
        (self.hooks / "sitecustomize.py").write_text(HOOK)
        self._client: httpx.Client | None = None

    # paths
    hub_dir = property(lambda self: self.root / "fed" / "hub")
    researcher_dir = property(lambda self: self.root / "fed" / "researcher")
    url = property(lambda self: f"https://127.0.0.1:{self.port}")

    def kit(self, site: str) -> Path:
        return self.root / "site-kits" / site

    def state(self, site: str) -> Path:
        return self.root / "state" / site

    def set_policy(self, site: str, text: str) -> None:
        """Give ``site``'s node a privacy policy (so it keeps a ledger)."""
        policy = self.root / "data" / f"{site}-privacy.toml"
        policy.write_text(text)
        conf = self.node_configs[site]
        body = conf.read_text().split("\n[privacy]")[0]
        conf.write_text(body + f'\n[privacy]\npolicy = "{policy.name}"\n')

    # processes
    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        log = self.root / "logs" / f"{name}-{len(self.procs)}.log"
        log.parent.mkdir(exist_ok=True)
        full = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "NO_COLOR": "1",
                **(env or {})}
        with open(log, "wb") as out:
            popen = subprocess.Popen([sys.executable, "-m", "fedcare.cli.main", *args],
                                     stdout=out, stderr=subprocess.STDOUT, env=full,
                                     cwd=self.root, preexec_fn=_die_with_parent)
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def start_hub(self, *extra: str, wait: bool = True) -> Proc:
        self.hub = self.spawn("hub", ["hub", "start", "--kit", str(self.hub_dir),
                                      "--port", str(self.port), *extra])
        if wait:
            self.wait("the hub's /v1/health", self._healthy, START_TIMEOUT)
        return self.hub

    def start_node(self, site: str, hooked: bool = True) -> Proc:
        env = None
        if hooked:
            path = os.pathsep.join(p for p in (str(self.hooks), os.environ.get("PYTHONPATH"))
                                   if p)
            env = {"PYTHONPATH": path, "AUDIT_HOOKS": str(self.hooks), "AUDIT_SITE": site}
        proc = self.spawn(f"node-{site}", ["node", "start", "--kit", str(self.kit(site)),
                                           "--data", str(self.node_configs[site]),
                                           "--state-dir", str(self.state(site))], env)
        self.nodes[site] = proc
        return proc

    def start(self, sites: tuple[str, ...] | None = None, *hub_args: str) -> Fed:
        self.start_hub(*hub_args)
        for site in sites or self.sites:
            self.start_node(site)
        self.wait_sites(list(sites or self.sites))
        return self

    def kill_hub(self) -> None:
        if self.hub is not None:
            self.hub.kill()
        self.reset()

    def close(self) -> None:
        self.reset()
        for proc in self.procs:
            with contextlib.suppress(Exception):
                proc.kill()

    def reset(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # waiting
    def wait(self, what: str, check: Callable[[], Any], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.hub is not None and not self.hub.alive():
                raise AuditError(f"hub exited ({self.hub.popen.returncode}) waiting for {what}"
                                 f": {self.hub.tail(800)}")
            try:
                got = check()
                if got:
                    return got
            except (httpx.HTTPError, OSError) as exc:
                last = exc
            time.sleep(POLL)
        raise AuditError(f"timed out after {timeout:.0f} s waiting for {what} ({last!r})")

    def _healthy(self) -> bool:
        with httpx.Client(verify=self.ca(), timeout=3.0) as c:
            return c.get(f"{self.url}/v1/health").status_code == 200

    def wait_sites(self, names: list[str], timeout: float = START_TIMEOUT) -> None:
        self.wait(f"sites {names}", lambda: set(names) <= {
            s["name"] for s in self.call("GET", "/v1/sites").json()}, timeout)

    # researcher side
    def ca(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.researcher_dir / "ca.crt"))

    @property
    def token(self) -> str:
        return (self.researcher_dir / "researcher.token").read_text().strip()

    def client(self) -> httpx.Client:
        """The researcher's client, made from the researcher folder alone (URL, CA, token)."""
        if self._client is None:
            from fedcare.client import HubClient

            self._client = HubClient(self.researcher_dir, None, None, None).http
        return self._client

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return self.client().request(method, path, **kw)

    def submit(self, cfg: dict[str, Any]) -> str:
        r = self.call("POST", "/v1/studies", json=cfg)
        if r.status_code != 201:
            raise AuditError(f"submit answered {r.status_code}: {r.text[:300]}")
        return str(r.json()["study_id"])

    def status(self, study_id: str) -> dict[str, Any]:
        r = self.call("GET", f"/v1/studies/{study_id}")
        r.raise_for_status()
        return dict(r.json())

    def wait_study(self, study_id: str, timeout: float = 120.0) -> dict[str, Any]:
        return dict(self.wait(f"study {study_id}", lambda: (lambda st: st if st["status"] in (
            "completed", "failed", "cancelled", "paused") else None)(self.status(study_id)),
            timeout))

    def events(self, study_id: str) -> list[dict[str, Any]]:
        return list(self.call("GET", f"/v1/studies/{study_id}/events").json())

    def artifact(self, study_id: str, name: str) -> bytes:
        """A finished study's file from the hub's own folder (no route serves it: it leaves
        only through the airlock)."""
        return (self.hub_dir / "data" / "studies" / study_id / name).read_bytes()

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fedcare.cli.main", *args],
                              capture_output=True, text=True, timeout=timeout, cwd=self.root,
                              env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})

    # hooks
    def hold(self, site: str, kind: str, round_: int, when: str = "in") -> None:
        for stale in (f"held-{site}", f"release-{site}"):
            (self.hooks / stale).unlink(missing_ok=True)
        (self.hooks / f"hold-{site}.json").write_text(json.dumps(
            {"kind": kind, "round": round_, "when": when}))

    def held(self, site: str, timeout: float = 120.0) -> str:
        self.wait(f"{site} to hold", lambda: (self.hooks / f"held-{site}").exists(), timeout)
        return (self.hooks / f"held-{site}").read_text()

    def release(self, site: str) -> None:
        (self.hooks / f"release-{site}").write_text("go")

    def fits(self, site: str, study_id: str) -> dict[int, int]:
        log = self.hooks / f"fits-{site}.log"
        words = log.read_text().split() if log.exists() else []
        out: dict[int, int] = {}
        for s, r in zip(words[::2], words[1::2], strict=True):
            if s == study_id:
                out[int(r)] = out.get(int(r), 0) + 1
        return out

    def ledger(self, site: str, study_id: str) -> list[dict[str, Any]]:
        path = self.state(site) / "privacy-ledger.jsonl"
        if not path.exists():
            return []
        return [e for e in map(json.loads, path.read_text().splitlines())
                if e.get("study") == study_id]
