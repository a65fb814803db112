"""A real networked federation for tests: hub and nodes as subprocesses on loopback.

:class:`NetFederation` provisions a federation into a temporary folder (CA, hub and
researcher folders in ``fed/``; each site's own kit, with its key, in ``site-kits/<site>``,
made as a site makes it: ``node init``, the coordinator signs, ``node install-cert``), writes
each site's slice of the breast-cancer table as a CSV plus its node data config, and starts
``fedcare hub start`` / ``fedcare node start`` as real processes (``sys.executable -m
fedcare.cli.main``) on a free loopback port. Researchers' calls go over
HTTPS with the federation CA and the bearer token; node-side calls use a site's own kit.

Every wait is bounded, and every process the harness started is killed (SIGKILL) by
:meth:`NetFederation.close`, which the ``net`` fixture factory calls in its finalizer whatever
the test did. On a failure the tail of each process log is attached to the message.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from fedcare.hub.provisioning import create_federation
from tests.unit.helpers import permissive_policy as permissive_policy
from tests.unit.helpers import with_permissive_policy

SITES = ("alpha", "beta", "gamma")
DATASET = "breast"
RAW_DATASET = "breast_raw"
LABEL = "target"
#: A handful of breast-cancer features: a tiny logreg, fast rounds.
FEATURES = ["mean_radius", "mean_texture", "mean_perimeter", "mean_area", "mean_smoothness",
            "mean_concavity", "worst_radius", "worst_texture"]
START_TIMEOUT = 60.0     # a cold python + torch import on a loaded 2-core box
STUDY_TIMEOUT = 60.0
POLL = 0.1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_site_tables(folder: Path, sites: tuple[str, ...] = SITES, seed: int = 0) -> dict[
        str, dict[str, Path]]:
    """Disjoint row slices of the breast-cancer table, one CSV per site and dataset:
    ``{dataset: {site: path}}``.

    Dataset :data:`DATASET` has its features standardized here, once, with whole-table
    statistics, so studies can run with ``data.standardize = false`` and still train well;
    :data:`RAW_DATASET` holds the same rows on their original scales (for studies that
    standardize, federation-wide, through the protocol's stats tasks).
    """
    from sklearn.datasets import load_breast_cancer

    raw = load_breast_cancer(as_frame=True).frame
    raw.columns = [c.replace(" ", "_") for c in raw.columns]
    raw = raw[[*FEATURES, LABEL]].copy()
    scaled = raw.copy()
    scaled[FEATURES] = (raw[FEATURES] - raw[FEATURES].mean()) / raw[FEATURES].std(ddof=0)
    order = np.random.default_rng(seed).permutation(len(raw))
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, dict[str, Path]] = {DATASET: {}, RAW_DATASET: {}}
    for i, site in enumerate(sites):
        rows = order[i::len(sites)]
        for name, frame in ((DATASET, scaled), (RAW_DATASET, raw)):
            path = folder / f"{site}-{name}.csv"
            frame.iloc[rows].to_csv(path, index=False)
            paths[name][site] = path
    return paths


def study_config(*, name: str = "net", rounds: int = 3, seed: int = 7, **over: Any) -> dict[
        str, Any]:
    """A networked study over the harness's dataset; ``over`` replaces/merges sections."""
    cfg: dict[str, Any] = {
        "study": {"name": name, "seed": seed, "rounds": rounds},
        "data": {"source": "federation", "dataset": DATASET, "label": LABEL,
                 "features": list(FEATURES), "standardize": False, "test_fraction": 0.2},
        "model": {"name": "logreg"},
        "train": {"local_epochs": 1, "batch_size": 16, "lr": 0.1},
        "strategy": {"name": "fedavg"},
        "baselines": {"local": False, "centralized": False},
        "run": {"round_timeout": 30},
    }
    for key, value in over.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


def simulation_of(cfg: dict[str, Any], tables: dict[str, dict[str, Path]],
                  sites: list[str]) -> dict[str, Any]:
    """The same study as a simulation over the same files (``sites`` in the hub's order:
    sorted, which is also each site's index for its seeds and its train/test split)."""
    data = dict(cfg["data"])
    files = tables[data["dataset"]]
    sim = {**cfg, "data": {
        "source": "files", "label": data["label"], "features": data["features"],
        "standardize": data["standardize"], "test_fraction": data["test_fraction"],
        "site": [{"name": s, "path": str(files[s])} for s in sites]}}
    sim["run"] = {**cfg.get("run", {}), "workers": 1}
    return sim


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL me if the test process dies without cleaning up
    (itself killed -9, say), so no hub or node outlives its test run. Linux only."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL and reap (no graceful shutdown: that is what the tests want anyway)."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


@dataclass
class NetFederation:
    """A provisioned federation in ``root`` whose hub and nodes run as subprocesses."""

    root: Path
    sites: tuple[str, ...] = SITES
    #: Each site's ``[approval] studies``: "any" (every study is pre-approved), or a list
    #: of content hashes (empty: every study waits for its steward's `fedcare node approve`).
    approvals: str | list[str] = "any"
    port: int = field(default_factory=free_port)
    procs: list[Proc] = field(default_factory=list)
    hub: Proc | None = None
    nodes: dict[str, Proc] = field(default_factory=dict)
    _client: httpx.Client | None = None
    #: The hub's state folder (``--data-dir``; default: the hub kit's ``data``).
    hub_data_dir: Path | None = None

    def __post_init__(self) -> None:
        # Each site's kit (and key) is made in its own folder, outside the coordinator's.
        self.fed = create_federation(self.root / "fed", hub_host="127.0.0.1",
                                     hub_port=self.port, sites=list(self.sites),
                                     site_kits=self.kits_dir)
        self.tables = write_site_tables(self.root / "data", self.sites)
        self.node_configs = {}
        for site in self.sites:
            conf = self.root / "data" / f"{site}.toml"
            conf.write_text("".join(f'[datasets.{name}]\npath = "{files[site].name}"\n\n'
                                    for name, files in self.tables.items())
                            + f"[approval]\nstudies = {json.dumps(self.approvals)}\n")
            # Each site states a permissive policy (every key): the studies here are plain;
            # tests of the site policy replace the file.
            with_permissive_policy(conf, f"{site}-policy.toml")
            self.node_configs[site] = conf

    # -- paths --------------------------------------------------------------------------
    @property
    def fed_dir(self) -> Path:
        return self.root / "fed"

    @property
    def hub_dir(self) -> Path:
        return self.fed_dir / "hub"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def kits_dir(self) -> Path:
        """Where each site's own kit lives (never inside the coordinator's ``fed_dir``)."""
        return self.root / "site-kits"

    @property
    def researcher_dir(self) -> Path:
        return self.fed_dir / "researcher"

    def kit(self, site: str) -> Path:
        return self.kits_dir / site

    # -- processes ----------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        log = self.root / "logs" / f"{name}-{len(self.procs)}.log"
        log.parent.mkdir(exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
               "NO_COLOR": "1", **(env or {})}
        with open(log, "wb") as out:
            popen = subprocess.Popen([sys.executable, "-m", "fedcare.cli.main", *args],
                                     stdout=out, stderr=subprocess.STDOUT, env=env,
                                     cwd=self.root, preexec_fn=_die_with_parent)
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def start_hub(self, *, db: str | None = None, max_body_mb: int | None = None,
                  keep_replies: bool = False, wait: bool = True,
                  data_dir: Path | None = None, api_docs: bool = False) -> Proc:
        args = ["hub", "start", "--kit", str(self.hub_dir), "--port", str(self.port)]
        self.hub_data_dir = data_dir
        if api_docs:
            args.append("--api-docs")
        if data_dir is not None:
            args += ["--data-dir", str(data_dir)]
        if keep_replies:
            args.append("--keep-replies")
        if db:
            args += ["--db", db]
        if max_body_mb is not None:
            args += ["--max-body-mb", str(max_body_mb)]
        self.hub = self._spawn("hub", args)
        if wait:
            self.wait_healthy()
        return self.hub

    def start_node(self, site: str, *, kit: Path | None = None,
                   env: dict[str, str] | None = None) -> Proc:
        """``env`` adds to the node's environment (e.g. ``HTTPS_PROXY``)."""
        args = ["node", "start", "--kit", str(kit or self.kit(site)),
                "--data", str(self.node_configs[site]),
                "--state-dir", str(self.root / "state" / site)]
        proc = self._spawn(f"node-{site}", args, env)
        self.nodes[site] = proc
        return proc

    def start(self, sites: tuple[str, ...] | None = None, **hub_kw: Any) -> NetFederation:
        """Hub, then one node per site; returns once every node has said hello."""
        self.start_hub(**hub_kw)
        for site in sites or self.sites:
            self.start_node(site)
        self.wait_sites(list(sites or self.sites))
        return self

    def kill_hub(self) -> None:
        assert self.hub is not None
        self.hub.kill()
        self._reset_client()

    def kill_node(self, site: str) -> None:
        self.nodes[site].kill()

    def close(self) -> None:
        """Kill every process this harness started; never raises."""
        self._reset_client()
        for proc in self.procs:
            with contextlib.suppress(Exception):
                proc.kill()

    def logs(self) -> str:
        return "\n".join(f"----- {p.name} ({p.log.name}, "
                         f"{'alive' if p.alive() else f'exit {p.popen.returncode}'}) -----\n"
                         f"{p.tail()}" for p in self.procs)

    def fail(self, message: str) -> None:
        pytest.fail(f"{message}\n{self.logs()}", pytrace=False)

    # -- waiting ------------------------------------------------------------------------
    def wait_until(self, what: str, check: Callable[[], Any], timeout: float,
                   procs: list[Proc] | None = None) -> Any:
        """Poll ``check`` until it returns something truthy; fail (with logs) at ``timeout``
        or as soon as one of ``procs`` (default: the hub) has died."""
        deadline = time.monotonic() + timeout
        watch = procs if procs is not None else [self.hub] if self.hub else []
        last: Exception | None = None
        while time.monotonic() < deadline:
            for proc in watch:
                if not proc.alive():
                    self.fail(f"{proc.name} exited ({proc.popen.returncode}) while waiting "
                              f"for {what}")
            try:
                got = check()
                if got:
                    return got
            except (httpx.HTTPError, OSError) as exc:
                last = exc
            time.sleep(POLL)
        self.fail(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last!r})")

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        def healthy() -> bool:
            with httpx.Client(verify=self._ca_context(), timeout=2.0) as c:
                return c.get(f"{self.url}/v1/health").status_code == 200

        self.wait_until("the hub's /v1/health", healthy, timeout)

    def wait_sites(self, names: list[str], timeout: float = START_TIMEOUT,
                   seen_after: str | None = None) -> None:
        """Until every site in ``names`` is listed (optionally: seen after an ISO time)."""
        def registered() -> bool:
            listed = {s["name"]: s["last_seen"] for s in self.call("GET", "/v1/sites").json()}
            return all(n in listed and (seen_after is None or listed[n] > seen_after)
                       for n in names)

        self.wait_until(f"sites {names} to register", registered, timeout,
                        procs=[self.hub, *(self.nodes[n] for n in names if n in self.nodes)]
                        if self.hub else None)

    # -- researcher API -----------------------------------------------------------------
    def _ca_context(self) -> Any:
        import ssl

        return ssl.create_default_context(cafile=str(self.hub_dir / "ca.crt"))

    def _reset_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def token(self) -> str:
        """The researcher user's token (provisioning's user ``researcher``)."""
        return (self.researcher_dir / "researcher.token").read_text().strip()

    @property
    def admin_token(self) -> str:
        """The first admin's token (``fed/admin/admin.token``)."""
        return (self.fed_dir / "admin" / "admin.token").read_text().strip()

    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(base_url=self.url, verify=self._ca_context(),
                                        timeout=30.0,
                                        headers={"Authorization": f"Bearer {self.token}"})
        return self._client

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return self.client().request(method, path, **kw)

    def submit(self, cfg: dict[str, Any]) -> str:
        r = self.call("POST", "/v1/studies", json=cfg)
        if r.status_code != 201:
            self.fail(f"submit answered {r.status_code}: {r.text}")
        return str(r.json()["study_id"])

    def status(self, study_id: str) -> dict[str, Any]:
        r = self.call("GET", f"/v1/studies/{study_id}")
        r.raise_for_status()
        return dict(r.json())

    def wait_study(self, study_id: str, timeout: float = STUDY_TIMEOUT,
                   until: Callable[[dict[str, Any]], bool] | None = None,
                   what: str = "the study to finish") -> dict[str, Any]:
        """Poll the study until ``until(status)`` (default: a terminal status)."""
        def done() -> dict[str, Any] | None:
            st = self.status(study_id)
            if until is None:
                return st if st["status"] in ("completed", "failed", "cancelled",
                                              "paused", "rejected", "expired") else None
            if st["status"] in ("failed", "cancelled", "rejected", "expired"):
                self.fail(f"study {study_id} {st['status']}: {st.get('error')}")
            return st if until(st) else None

        return dict(self.wait_until(what, done, timeout))

    def run_study(self, cfg: dict[str, Any], timeout: float = STUDY_TIMEOUT) -> dict[str, Any]:
        st = self.wait_study(self.submit(cfg), timeout)
        if st["status"] != "completed":
            self.fail(f"study ended {st['status']}: {st.get('error')}")
        return st

    def events(self, study_id: str) -> list[dict[str, Any]]:
        r = self.call("GET", f"/v1/studies/{study_id}/events")
        r.raise_for_status()
        return list(r.json())

    def artifact(self, study_id: str, name: str) -> bytes:
        """A finished study's file, read from the hub's own folder as its operator can (no
        route serves it: it leaves the federation only through the airlock, see
        tests/integration/test_airlock_network.py)."""
        path = (self.hub_data_dir or self.hub_dir / "data") / "studies" / study_id / name
        if not path.is_file():
            self.fail(f"study {study_id} has no {name} on the hub")
        return path.read_bytes()

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run a ``fedcare`` command (e.g. ``study logs ID --federation``) to completion."""
        return subprocess.run([sys.executable, "-m", "fedcare.cli.main", *args],
                              capture_output=True, text=True, timeout=timeout, cwd=self.root,
                              env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})

    def node_cli(self, site: str, *args: str) -> subprocess.CompletedProcess[str]:
        """A site steward's ``fedcare node ARGS`` on the node's folder (its kit and state)."""
        return self.cli("node", *args, "--kit", str(self.kit(site)),
                        "--state-dir", str(self.root / "state" / site))

    # -- acting as a site ---------------------------------------------------------------
    def approve_as(self, site: str, study_id: str) -> None:
        """Report ``site``'s approval of the study as its node does (for a site whose node
        is down when the study is submitted: it approved, then its node died)."""
        digest = self.status(study_id)["config_hash"]
        with self.site_client(site) as client:
            r = client.post("/v1/node/decisions", json={
                "study_id": study_id, "content_hash": digest, "decision": "approved"})
        if r.status_code != 200:
            self.fail(f"{site}'s approval answered {r.status_code}: {r.text}")

    def site_client(self, site: str, kit: Path | None = None) -> httpx.Client:
        """An HTTPS client presenting ``site``'s certificate (mutual TLS), as a node does."""
        from fedcare.pki.trust import client_ssl_context

        return httpx.Client(base_url=self.url, timeout=30.0,
                            verify=client_ssl_context(kit or self.kit(site)))


@pytest.fixture(name="net")
def net_fixture(tmp_path: Path) -> Iterator[Callable[..., NetFederation]]:
    """Factory of :class:`NetFederation` s; every process they started is killed at teardown
    (a finalizer in this fixture), whether the test passed, failed or was interrupted."""
    made: list[NetFederation] = []

    def make(name: str = "fed", sites: tuple[str, ...] = SITES,
             port: int | None = None, approvals: str | list[str] = "any") -> NetFederation:
        kw: dict[str, Any] = {"sites": sites, "approvals": approvals}
        if port is not None:
            kw["port"] = port
        fed = NetFederation(tmp_path / f"{name}-{len(made)}", **kw)
        made.append(fed)
        return fed

    try:
        yield make
    finally:
        for fed in made:
            fed.close()
