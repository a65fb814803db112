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
from typing import TYPE_CHECKING, Any

from rich.console import Console

from fedcare.core.errors import FedcareError
from fedcare.demo.hospitals import DATASET, DemoSite, write_hospitals
from fedcare.hub.schemas import DatasetQuality
from fedcare.reporting.progress import StudyProgress

if TYPE_CHECKING:
    from fedcare.client import HubClient

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


def _approve(kit: Path, digest: str, procs: list[subprocess.Popen[bytes]], logs: Path,
             console: Console) -> None:
    """What a hospital's data steward runs once they have read the study (`fedcare node
    studies --show HASH`): approving its exact content hash, while the node runs."""
    args = ["node", "approve", digest[:12], "--kit", str(kit)]
    console.print(f"  {kit.name}'s steward: fedcare {' '.join(args[:3])}")

    def approved() -> bool:  # the node lists the study once it has asked the hub (~2 s)
        done = subprocess.run([sys.executable, "-m", "fedcare.cli.main", *args],
                              capture_output=True, timeout=120)
        return done.returncode == 0

    _wait(f"{kit.name} to approve the study", approved, 120, procs, logs)


def _through_airlock(work: Path, researcher: HubClient, study_id: str, sites: list[str],
                     console: Console) -> bytes:
    """The federated model leaves the hub the only way anything does: the researcher
    requests its export, the hub's automatic checks run, each hospital's steward (a hub user
    the admin adds, bound to that site) approves, and the researcher downloads exactly the
    bytes they approved (the client checks the SHA-256)."""
    from fedcare.client import HubClient
    from fedcare.pki.trust import load_researcher_config

    admin = HubClient(work, None, None, None, user_folder="admin")
    mine = load_researcher_config(work / "researcher")  # the hub's URL and the CA to trust
    url, ca = mine.hub_url, mine.ca
    stewards = {site: admin.add_user(f"steward-{site}", "steward", site).token
                for site in sites}
    console.print(f"The admin added a data steward user for each hospital "
                  f"({', '.join(f'steward-{s}' for s in sites)}).")
    request = researcher.request_export(study_id, "model.safetensors",
                                        "demo: the federated model, for the report")
    flags = "; ".join(request.flags) or "none"
    console.print(f"Airlock: export {request.id} of model.safetensors "
                  f"(SHA-256 {request.digest[:16]}...) requested; automatic checks: "
                  f"{len(request.refusals)} refusal(s), flags: {flags}")
    for site, token in stewards.items():
        steward = HubClient(None, url, ca, token)
        decided = steward.decide_export(request.id, approve=True,
                                        reason="aggregate model under secure aggregation; "
                                               "flag read")
        console.print(f"  steward-{site}: approved ({decided.approvals} of "
                      f"{decided.quorum})")
    data, digest = researcher.download_export(request.id)
    console.print(f"  researcher: downloaded {len(data)} bytes, SHA-256 {digest[:16]}... "
                  "(the approved bytes)")
    return data


def study_config(features: list[str], label: str, contract_hash: str) -> dict[str, Any]:
    return {
        # A risk model at ~20 % prevalence: judged by discrimination (AUC), not accuracy,
        # which the trivial "nobody has an event" prediction nearly matches.
        "study": {"name": "cardio-risk-federation", "seed": 0, "rounds": ROUNDS,
                  "primary_metric": "auc",
                  "description": "Demonstration only (synthetic patients): 5-year risk of "
                                 "myocardial infarction or stroke for adults seen in 2020, "
                                 "to show how a federated risk model is built; not for "
                                 "clinical use."},
        "data": {"source": "federation", "dataset": DATASET, "label": label,
                 "features": features, "test_fraction": 0.25, "standardize": True,
                 "contract_hash": contract_hash},
        "model": {"name": "logreg"},
        "train": {"local_epochs": 1, "batch_size": 32, "lr": 0.05},
        "strategy": {"name": "fedavg", "min_completed": 2},
        # The hub only ever sees the sum of the hospitals' updates.
        "secure_aggregation": {"protocol": "secagg"},
        "run": {"round_timeout": 60, "evaluate_every": 1},
    }


def provision_demo(out: Path, hospitals: list[str], port: int) -> Path:
    """The demo's federation in ``out/federation`` and each hospital's own kit in
    ``out/site-kits/<name>``; returns the kits' folder.

    Every hospital runs the same steps as a real site (``fedcare node init``: its own key and
    a request; the coordinator signs it; ``fedcare node install-cert``), so the coordinator's
    folder never holds a hospital's key (and no CKKS secret: the sites of a CKKS study make
    its key among themselves).
    """
    from fedcare.hub.provisioning import create_federation

    kits = out / "site-kits"
    create_federation(out / "federation", hub_host="127.0.0.1", hub_port=port, sites=hospitals,
                      site_kits=kits)
    return kits


def run_demo(out: Path, console: Console) -> dict[str, Any]:
    from fedcare.client import HubClient, watch
    from fedcare.data.contract import contract_hash, feature_columns, load_contract

    out.mkdir(parents=True, exist_ok=True)
    work = out / "federation"
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    contract_file, sites = write_hospitals(out / "hospitals")
    contract = load_contract(contract_file)
    features = feature_columns(contract)
    formats = ", ".join(s.format.upper() for s in sites)
    console.print(f"Generated 3 synthetic hospitals exporting {formats} "
                  f"(different codes, units and case mix) against data contract "
                  f"{contract.name!r} v{contract.version}")
    port = _free_port()
    kits = provision_demo(out, [s.name for s in sites], port)
    console.print(f"Provisioned a federation in {work} (CA, hub certificate, researcher "
                  f"folder); each hospital made its own key in {kits} and had it signed; hub "
                  f"on https://127.0.0.1:{port}")
    with processes() as procs:
        procs.append(_start(["hub", "start", "--kit", str(work / "hub")], logs / "hub.log"))
        client = _wait("the hub", lambda: HubClient(work / "researcher", None, None, None), 60,
                       procs, logs)
        _wait("the hub", client.health, 60, procs, logs)
        for site in sites:
            procs.append(_start(["node", "start", "--kit", str(kits / site.name),
                                 "--data", str(site.node_config)], logs / f"node-{site.name}.log"))
        console.print("Started the hub and 3 site nodes as separate processes "
                      f"(logs in {logs}); each node harmonizes its own export to the "
                      "contract...")
        _wait("3 nodes to connect",
              lambda: len(client.sites()) == len(sites),
              180, procs, logs)
        quality = client.dataset_quality(DATASET)
        _print_quality(quality, console)
        study = client.submit(study_config(features, contract.label.name,
                                           contract_hash(contract)))
        console.print(f"Submitted study {study.study_id} (content hash "
                      f"{study.config_hash[:16]}..., secure aggregation) to "
                      f"{', '.join(study.sites)}: pending approval by each hospital")
        for site in sites:  # each hospital's data steward, on its node's machine
            _approve(kits / site.name, study.config_hash, procs, logs, console)
        with StudyProgress(console) as bar:
            final = watch(client, study.study_id, on_status=bar, poll=0.3)
        if final.status != "completed":
            raise FedcareError(f"the demo study {final.status}: {final.error}")
        model_bytes = _through_airlock(work, client, study.study_id, [s.name for s in sites],
                                       console)
        (out / "model.safetensors").write_bytes(model_bytes)
        # The run's history (per-round metrics of every site) is read from the hub's own
        # folder: the demo owns the hub, and it adds the pooled baselines below.
        finished = work / "hub" / "data" / "studies" / study.study_id
        history = json.loads((finished / "history.json").read_text(encoding="utf-8"))
    console.print("Stopped every process. Computing the baselines (simulation on the same "
                  "harmonized tables, only possible because the demo owns every hospital)...")
    tables, equal = harmonized_tables(contract_file, sites, out / "tables")
    console.print("Harmonized tables equal the generator's ground truth: "
                  + ("[green]yes[/green]" if equal else "[red]NO[/red]"))
    history["baselines"] = baselines(tables, features, contract.label.name)
    history["data_quality"] = quality.model_dump(mode="json")
    from fedcare.core.files import atomic_write
    from fedcare.reporting import write_report

    atomic_write(out / "history.json", json.dumps(history, indent=2).encode())
    write_report(history, out / "report.html")
    return history


def print_audit(out: Path, console: Console) -> bool:
    """What ``fedcare audit verify`` says of the demo's (in ``out``) hub's signed audit log
    and of every node's (each signed with its own key); True when every log verifies."""
    from rich.markup import escape

    from fedcare.governance.audit_log import AuditError, verify
    from fedcare.hub.audit import hub_log_and_keys
    from fedcare.node.audit import node_log_and_keys

    hub_data, kits = out / "federation" / "hub" / "data", out / "site-kits"
    sites = sorted(p.name for p in kits.iterdir() if p.is_dir())
    console.print("Signed audit trails (`fedcare audit verify --hub-dir` / `--node-dir`):")
    good = True
    checks = [("hub", lambda: hub_log_and_keys(hub_data))] + [
        (site, lambda site=site: node_log_and_keys(kits / site)) for site in sites]
    for name, source in checks:
        try:
            path, keys = source()
            verdict = verify(path, keys)
        except AuditError as exc:
            console.print(f"  [red]{name}: {escape(str(exc))}[/red]")
            good = False
            continue
        if verdict.ok:
            console.print(f"  {name}: [green]OK[/green] - {verdict.entries} entries, chain and "
                          f"signatures verify ({escape(str(path))})")
        else:
            console.print(f"  {name}: [red]FAILED[/red] - {escape(str(verdict.problem))}")
            good = False
    return good


def _print_quality(quality: DatasetQuality, console: Console) -> None:
    """What the hub learned before training: each site's shareable quality report, compared."""
    for site, report in sorted(quality.reports.items()):
        rejected = sum(v for v in (report.get("rejects") or {}).values() if isinstance(v, int))
        console.print(f"  {site}: quality report received - cohort rows "
                      f"{report.get('cohort_rows', '?')}, source records rejected by reason "
                      f"{report.get('rejects') or {}}" if rejected else
                      f"  {site}: quality report received - cohort rows "
                      f"{report.get('cohort_rows', '?')}")
    for site, why in quality.refusing.items():
        console.print(f"  [red]{site} will refuse to train: {why}[/red]")
    findings, seen = [], set()
    for f in quality.findings:
        if f["message"] not in seen:
            seen.add(f["message"])
            findings.append(f)
    for f in findings[:8]:
        console.print(f"  [yellow]{f['kind']}[/yellow]: {f['message']}")
    if len(findings) > 8:
        console.print(f"  ... and {len(findings) - 8} more findings (`fedcare study data "
                      f"{DATASET}`)")


def harmonized_tables(contract_file: Path, sites: list[DemoSite], folder: Path
                      ) -> tuple[dict[str, Path], bool]:
    """Each hospital's feature table built exactly as its node built it, and whether they all
    equal the generator's ground truth (the check the demo's data path must pass)."""
    import numpy as np

    from fedcare.node.site_data import build_clinical_table

    folder.mkdir(parents=True, exist_ok=True)
    files, equal = {}, True
    for site in sites:
        built = build_clinical_table(site.source, contract_file, site.name)
        frame = built.table.frame
        truth = site.truth.dropna()
        cols = list(frame.columns)
        got = frame.sort_index()[cols].round(4)
        want = truth.sort_index()[cols].round(4) if set(cols) <= set(truth.columns) else None
        equal = equal and want is not None and got.shape == want.shape and bool(
            np.allclose(got.to_numpy(float), want.to_numpy(float)))
        path = folder / f"{site.name}.csv"
        frame.to_csv(path, index=False)
        files[site.name] = path
    return files, equal


def baselines(files: dict[str, Path], features: list[str], label: str) -> dict[str, Any]:
    """Local-only and pooled baselines in simulation, same split and seed as the network run."""
    import fedcare

    cfg = {"study": {"name": "baselines", "seed": 0, "rounds": ROUNDS},
           "data": {"source": "files", "label": label, "features": features,
                    "test_fraction": 0.25,
                    "site": [{"name": n, "path": str(p)} for n, p in sorted(files.items())]},
           "model": {"name": "logreg"},
           "train": {"local_epochs": 1, "batch_size": 32, "lr": 0.05},
           "baselines": {"local": True, "centralized": True},
           "run": {"evaluate_every": 0, "workers": 1}}
    return fedcare.simulate(cfg).baselines
