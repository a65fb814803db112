"""Re-run the security audit (/work/shared/reviews/security-audit.md, F1-F22) against real hub
and node processes on loopback, one line per case:

    ID  VERDICT  | what was tried | expected: ... | observed: ...

VERDICT is HELD (the attack or fault failed: the product behaved), FAILED (it did not),
SKIPPED (needs root: tmpfs, bind mounts) or ERROR (the harness could not carry the case out).
Every process started here is killed by its pid when its session ends; every wait is bounded.
Usage: ``python benchmarks/security_audit/run.py [--only F1,F6,...] [--keep DIR]``.
Exit status: 0 if nothing FAILED or ERRORed, else 1.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fed import DATASET, RANGES, RAW_DATASET, AuditError, Fed, study
from rogue import Rogue, context, rewrite_header

WATCHDOG = 25 * 60  # the whole run, hard limit
RESULTS: list[tuple[str, str]] = []
ONLY: set[str] = set()


class Case:
    def __init__(self, cid: str, tried: str, expected: str) -> None:
        self.cid, self.tried, self.expected = cid, tried, expected
        self.recorded = False

    def done(self, observed: str, held: bool) -> None:
        self._print("HELD" if held else "FAILED", observed)

    def skip(self, why: str) -> None:
        self._print("SKIPPED", why)

    def _print(self, verdict: str, observed: str) -> None:
        self.recorded = True
        RESULTS.append((self.cid, verdict))
        print(f"{self.cid:<9} {verdict:<7} | {self.tried} | expected: {self.expected} | "
              f"observed: {' '.join(observed.split())[:400]}", flush=True)


@contextlib.contextmanager
def case(cid: str, tried: str, expected: str) -> Iterator[Case]:
    c = Case(cid, tried, expected)
    try:
        yield c
    except Exception as exc:  # noqa: BLE001 (the harness failed to carry the case out
        c._print("ERROR", f"{type(exc).__name__}: {exc}")
    else:
        if not c.recorded:
            c._print("ERROR", "the case recorded no result")


def wanted(*finding: str) -> bool:
    return not ONLY or bool(ONLY & set(finding))


def is_root() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


def secrets_in(folder: Path) -> list[str]:
    """Files under ``folder`` holding a PEM private key or a CKKS secret context."""
    from fedcare.core.framing import unframe
    from fedcare.privacy.he.context import CONTEXT_MAGIC

    found = []
    for p in folder.rglob("*"):
        if not p.is_file():
            continue
        data = p.read_bytes()
        if b"PRIVATE KEY-----" in data:
            found.append(str(p.relative_to(folder)))
            continue
        at = data.find(CONTEXT_MAGIC)
        while at >= 0:
            try:
                header, _ = unframe(data[at:], CONTEXT_MAGIC, what="HE context",
                                    max_header=1 << 16)
                if header.get("kind") != "public":
                    found.append(str(p.relative_to(folder)) + " (CKKS secret)")
                    break
            except Exception:  # noqa: BLE001 (not a context)
                pass
            at = data.find(CONTEXT_MAGIC, at + 1)
    return found


# ---------------------------------------------------------------------------------------------
# Session A: one plain federation. alpha and beta are real nodes, gamma is the rogue site,
# delta is revoked, epsilon's node holds a corrupted OMOP export (F15).
# ---------------------------------------------------------------------------------------------

def session_a(work: Path) -> None:
    fed = Fed(work / "A", sites=("alpha", "beta", "gamma", "delta", "epsilon"))
    try:
        _session_a(fed, work)
    finally:
        fed.close()


def _session_a(fed: Fed, work: Path) -> None:
    data_dir = fed.root / "hubdata"  # --data-dir, created by the hub under umask 022
    old = os.umask(0o022)
    try:
        fed.start_hub("--data-dir", str(data_dir))
    finally:
        os.umask(old)
    url, ca = fed.url, fed.researcher_dir / "ca.crt"
    anon = httpx.Client(base_url=url, verify=context(ca), timeout=10)
    token = fed.token

    # -- F13, F10 (custody): what the coordinator holds -------------------------------------
    if wanted("F13"):
        with case("F13", "scan the coordinator's folder (create_federation with site_kits=) "
                         "and the researcher folder for private keys", "only ca/ca.key and "
                  "hub/hub.key; the researcher folder holds none") as c:
            found = sorted(secrets_in(fed.root / "fed"))
            research = secrets_in(fed.researcher_dir)
            ok = set(found) <= {"ca/ca.key", "hub/hub.key"} and not research
            c.done(f"private keys in the coordinator's folder: {found}; researcher folder: "
                   f"{research or 'none'}", ok)
    if wanted("F10"):
        with case("F10a", "look for a CKKS secret context at provisioning (coordinator's "
                          "folder and every site kit)", "none: a study's key is made by its "
                  "first site") as c:
            found = [f for f in secrets_in(fed.root) if "CKKS" in f]
            c.done(f"CKKS secret contexts: {found or 'none'}", not found)

    # -- F17, F18, token and certificate checks --------------------------------------------
    if wanted("F17"):
        for i, path in enumerate(("/docs", "/redoc", "/openapi.json")):
            with case(f"F17{'abc'[i]}", f"GET {path} without certificate or token",
                      "not 200 (off by default)") as c:
                r = anon.get(path)
                c.done(f"{r.status_code}", r.status_code != 200)
    if wanted("F18"):
        with case("F18", "GET /v1/studies with 'Authorization: <token>' (no 'Bearer ')",
                  "401") as c:
            r = anon.get("/v1/studies", headers={"Authorization": token})
            c.done(f"{r.status_code}", r.status_code == 401)
    if wanted("H-auth"):
        for cid, what, headers in (
                ("H-tok1", "no token", {}),
                ("H-tok2", "a wrong token", {"Authorization": "Bearer " + "x" * 40}),
                ("H-tok3", "lower-case 'bearer' and a wrong token",
                 {"Authorization": "bearer " + "y" * 40})):
            with case(cid, f"GET /v1/studies with {what}", "401") as c:
                r = anon.get("/v1/studies", headers=headers)
                c.done(f"{r.status_code}", r.status_code == 401)
        with case("H-tok4", "search the hub's log for the researcher token", "absent") as c:
            assert fed.hub is not None
            c.done("absent" if token not in fed.hub.tail(10**7) else "present",
                   token not in fed.hub.tail(10**7))
        with case("H-cert1", "POST /v1/node/hello with no client certificate", "401 or a TLS "
                  "refusal") as c:
            try:
                r = anon.post("/v1/node/hello", json={"version": "x", "session": "s" * 8,
                                                      "datasets": []})
                c.done(f"{r.status_code}", r.status_code == 401)
            except httpx.HTTPError as exc:
                c.done(f"TLS refused: {type(exc).__name__}", True)
        other = Fed.__new__(Fed)  # another federation's CA and a site 'alpha' of it
        from fedcare.hub.provisioning import create_federation

        create_federation(work / "foreign", hub_host="127.0.0.1", sites=["alpha"],
                          site_kits=work / "foreign-kits")
        del other
        fk = work / "foreign-kits" / "alpha"
        for cid, what, ctx in (
                ("H-cert2", "a certificate for site alpha from another CA",
                 context(ca, fk / "site.crt", fk / "site.key")),
                ("H-cert3", "the hub's certificate used as a client certificate",
                 context(ca, fed.hub_dir / "hub.crt", fed.hub_dir / "hub.key"))):
            with case(cid, f"POST /v1/node/hello with {what}", "TLS refused or 401/403") as c:
                try:
                    with Rogue(url, "alpha", ctx=ctx) as rg:
                        r = rg.hello()
                    c.done(f"{r.status_code} {r.text[:80]}", r.status_code in (401, 403))
                except httpx.HTTPError as exc:
                    c.done(f"TLS refused: {type(exc).__name__}", True)

    # -- F11: bounded hello --------------------------------------------------------------
    gamma = Rogue(url, "gamma", fed.kit("gamma"))
    try:
        if wanted("F11"):
            with case("F11a", "gamma POST /v1/node/hello with a 30 MB quality report",
                      "4xx (bounded like replies)") as c:
                big = {"name": DATASET, "rows": 190, "quality": {"blob": "x" * 30_000_000}}
                try:
                    r = gamma.hello([big])
                    c.done(f"{r.status_code}", 400 <= r.status_code < 500)
                except httpx.HTTPError as exc:
                    c.done(f"connection closed by the hub ({type(exc).__name__})", True)
            with case("F11b", "gamma hello with 1000 datasets x 20 KB", "4xx") as c:
                many = [{"name": f"d{i}", "rows": 1, "quality": {"x": "y" * 20_000}}
                        for i in range(1000)]
                try:
                    r = gamma.hello(many)
                    c.done(f"{r.status_code}", 400 <= r.status_code < 500)
                except httpx.HTTPError as exc:
                    c.done(f"connection closed by the hub ({type(exc).__name__})", True)
            with case("F11c", "size of hub.db after F11a/b", "no 20 MB row stored") as c:
                size = sum(p.stat().st_size for p in data_dir.glob("hub.db*"))
                c.done(f"hub.db* = {size / 1e6:.2f} MB", size < 5e6)
        assert gamma.hello().status_code == 200  # rows: 190, the declared bound

        # -- F4: 60 long-polls of one site --------------------------------------------
        if wanted("F4"):
            _long_polls(fed, url)

        for site in ("alpha", "beta"):
            fed.start_node(site, hooked=False)
        fed.wait_sites(["alpha", "beta", "gamma"])

        # -- F22: file modes of a --data-dir the hub created --------------------------
        if wanted("F22"):
            with case("F22", "modes of the --data-dir the hub created (umask 022), and "
                             "what another local user can reach", "owner-only") as c:
                top = data_dir.stat().st_mode & 0o777
                loose = [f"{p.relative_to(data_dir)} {oct(p.stat().st_mode & 0o777)}"
                         for p in data_dir.rglob("*") if p.stat().st_mode & 0o077]
                c.done(f"folder {oct(top)}: nothing beneath it reachable by others; "
                       f"hub.db {oct((data_dir / 'hub.db').stat().st_mode & 0o777)}",
                       not top & 0o077)
            with case("F22-deep", "every entry under that --data-dir", "owner-only (defence "
                      "in depth, as the state files are)") as c:
                c.done(f"group/world-accessible: {loose[:6] or 'none'}", not loose)

        # -- F21 (hub side), config refusals ----------------------------------------
        if wanted("F21", "H-config"):
            cfg = json.dumps(study("inf")).replace('"lr": 0.1', '"lr": 1e999')
            with case("F21c", "POST /v1/studies with \"lr\": 1e999", "422") as c:
                r = fed.call("POST", "/v1/studies", content=cfg,
                             headers={"Content-Type": "application/json"})
                c.done(f"{r.status_code} {r.text[:120]}", r.status_code == 422)
            with case("H-cfg1", "POST /v1/studies with an unknown key", "422") as c:
                r = fed.call("POST", "/v1/studies", json={**study("x"), "bogus": {"a": 1}})
                c.done(f"{r.status_code}", r.status_code == 422)
            with case("H-cfg2", "POST /v1/studies with a non-JSON body", "4xx") as c:
                r = fed.call("POST", "/v1/studies", content=b"\x00not json",
                             headers={"Content-Type": "application/json"})
                c.done(f"{r.status_code}", 400 <= r.status_code < 500)

        # -- F1, F3 and the malformed-reply cases, in one study ---------------------
        if wanted("F1", "F3", "H-bad"):
            _rogue_study(fed, gamma)

        # -- F12: roles ----------------------------------------------------------
        if wanted("F12"):
            with case("F12", "a second researcher (added by the admin) lists and reads the "
                             "first researcher's studies; a researcher adds a user",
                      "roles (submit / approve / read) or per-study ownership") as c:
                from fedcare.client import HubClient

                admin = HubClient(fed.root / "fed" / "admin", None, None, None)
                other = admin.add_user(f"audit-b-{int(time.time())}", "researcher")
                b = HubClient(fed.researcher_dir, None, None, other.token).http
                mine = [s["study_id"] for s in fed.call("GET", "/v1/studies").json()] or [
                    fed.submit(study("f12"))]  # (with --only F12: one study of A's)
                seen = b.get("/v1/studies").json()
                reads = {b.get(f"/v1/studies/{sid}").status_code for sid in mine}
                adds = fed.call("POST", "/v1/users", json={"name": "x", "role": "admin"})
                c.done(f"researcher B lists {len(seen)} of A's {len(mine)} studies, reading "
                       f"them answers {sorted(reads)}; a researcher adding a user: "
                       f"{adds.status_code}",
                       not seen and reads <= {404} and adds.status_code == 403)

        # -- F19: the CRL file goes missing ---------------------------------------
        if wanted("F19"):
            crl = fed.hub_dir / "crl.pem"
            saved = crl.read_bytes()
            with case("F19", "delete hub/crl.pem while the hub runs; gamma says hello",
                      "4xx with a reason (fails closed)") as c:
                crl.unlink()
                try:
                    r = gamma.hello()
                finally:
                    crl.write_bytes(saved)
                c.done(f"{r.status_code} {r.text[:100]}", 400 <= r.status_code < 500)
            with case("H-crl", "the CRL restored: gamma says hello", "200") as c:
                r = gamma.hello()
                c.done(f"{r.status_code}", r.status_code == 200)

        # -- revocation -------------------------------------------------------------
        if wanted("H-auth"):
            with case("H-cert4", "revoke delta (provisioning.revoke_site), then delta's "
                      "hello/task/reply", "403 on each within a few seconds") as c:
                from fedcare.hub.provisioning import revoke_site

                with Rogue(url, "delta", fed.kit("delta")) as delta:
                    before = delta.hello().status_code
                    revoke_site(fed.root / "fed", "delta")
                    t0 = time.monotonic()
                    codes: tuple[int, ...] = ()
                    while time.monotonic() - t0 < 20:
                        codes = (delta.hello().status_code, delta.poll(0).status_code,
                                 delta.post("x/r1/fit/delta", b"x").status_code)
                        if codes == (403, 403, 403):
                            break
                        time.sleep(0.5)
                c.done(f"before {before}; after {codes} in {time.monotonic() - t0:.1f} s",
                       codes == (403, 403, 403))
    finally:
        gamma.close()
        anon.close()

    # -- F15: a node whose OMOP export is corrupted -------------------------------------
    if wanted("F15"):
        _omop(fed, work)


def _long_polls(fed: Fed, url: str) -> None:
    with case("F4", "gamma opens 60 concurrent GET /v1/node/task?wait=20; alpha's hello and "
                    "a researcher's GET /v1/studies meanwhile", "both < 10 s (0.02 s idle)") as c:
        done: list[int] = []
        lock = threading.Lock()

        def poll() -> None:
            try:
                with Rogue(url, "gamma", fed.kit("gamma")) as rg:
                    code = rg.http.get("/v1/node/task", params={"wait": 20},
                                       timeout=60).status_code
            except httpx.HTTPError:
                code = -1
            with lock:
                done.append(code)

        threads = [threading.Thread(target=poll, daemon=True) for _ in range(60)]
        for t in threads:
            t.start()
        time.sleep(4.0)
        with Rogue(url, "alpha", fed.kit("alpha")) as alpha:
            t0 = time.monotonic()
            h = alpha.hello()
            hello_s = time.monotonic() - t0
        t0 = time.monotonic()
        s = fed.call("GET", "/v1/studies")
        studies_s = time.monotonic() - t0
        for t in threads:
            t.join(timeout=60)
        with lock:
            refused = sum(1 for x in done if x == 429)
        c.done(f"hello {h.status_code} in {hello_s:.2f} s, studies {s.status_code} in "
               f"{studies_s:.2f} s; {refused}/60 polls refused 429",
               hello_s < 10 and studies_s < 10 and h.status_code == 200)


def _rogue_study(fed: Fed, gamma: Rogue) -> None:
    from fedcare.core.params import Parameters

    sid = fed.submit(study("rogue", rounds=2, strategy={"min_completed": 2},
                           run={"round_timeout": 90}))
    t1 = gamma.next_task(120)
    good = gamma.update(t1)
    arr = dict(t1.parameters.items())
    name = next(iter(arr))

    def with_array(value: np.ndarray) -> bytes:
        return gamma.update(t1, Parameters({**arr, name: value}))

    bad: list[tuple[str, str, Any]] = [
        ("H-bad01", "wrong content type", lambda: gamma.post(t1.task_id, good,
                                                             content_type="text/plain")),
        ("H-bad02", "sha256 mismatch", lambda: gamma.post(t1.task_id, good, sha="0" * 64)),
        ("H-bad03", "no sha256 header", lambda: gamma.post(t1.task_id, good, sha=None)),
        ("H-bad04", "a truncated body", lambda: gamma.post(t1.task_id, good[:-7])),
        ("H-bad05", "garbage", lambda: gamma.post(t1.task_id, os.urandom(400))),
        ("H-bad06", "an empty body", lambda: gamma.post(t1.task_id, b"")),
        ("H-bad07", "an array of the wrong shape",
         lambda: gamma.post(t1.task_id, with_array(np.zeros((3, 3), np.float32)))),
        ("H-bad08", "a NaN in an array", lambda: gamma.post(t1.task_id, with_array(
            np.full_like(arr[name], np.nan)))),
        ("H-bad09", "an extra array", lambda: gamma.post(t1.task_id, gamma.update(
            t1, Parameters({**arr, "extra": np.zeros(2, np.float32)})))),
        ("H-bad10", "num_examples = -5", lambda: gamma.post(
            t1.task_id, rewrite_header(good, num_examples=-5))),
        ("H-bad11", "header task id differs from the query", lambda: gamma.post(
            t1.task_id, rewrite_header(good, task_id=f"{sid}/r1/fit/alpha"))),
        ("H-bad12", "path-like task id ../../../etc/passwd", lambda: gamma.post(
            "../../../etc/passwd", good)),
        ("H-bad13", "a 401-character task id", lambda: gamma.post("a" * 401, good)),
        ("H-cross", "gamma posts to alpha's task", lambda: gamma.post(
            f"{sid}/r1/fit/alpha", gamma.update(t1, task_id=f"{sid}/r1/fit/alpha"))),
    ]
    if wanted("H-bad"):
        for cid, what, send in bad:
            with case(cid, f"gamma's round-1 reply: {what}", "4xx") as c:
                r = send()
                c.done(f"{r.status_code} {r.text[:90]}", 400 <= r.status_code < 500)
    with case("F1", "gamma's round-1 reply with num_examples = 10**400 (a valid JSON "
                    "integer)", "4xx; the study goes on") as c:
        r = gamma.post(t1.task_id, rewrite_header(good, num_examples=10**400))
        f1 = f"{r.status_code} {r.text[:90]}"
        f1_ok = 400 <= r.status_code < 500
        c.done(f1 + " (study end checked below)", f1_ok)
    ok = gamma.post(t1.task_id, good)
    if ok.status_code != 202:
        raise AuditError(f"gamma's valid reply answered {ok.status_code}: {ok.text}")
    if wanted("H-bad"):
        with case("H-dup", "the same valid reply again", "409") as c:
            r = gamma.post(t1.task_id, good)
            c.done(f"{r.status_code}", r.status_code == 409)
    t2 = gamma.next_task(120)
    if wanted("H-bad"):
        with case("H-replay", "gamma's round-1 reply posted again during round 2", "409/410") \
                as c:
            r = gamma.post(t1.task_id, good)
            c.done(f"{r.status_code}", r.status_code in (409, 410))
    poison = Parameters({k: (v + 1e4).astype(v.dtype) for k, v in t2.parameters.items()})
    r2 = gamma.post(t2.task_id, gamma.update(t2, poison, num_examples=10**12))
    t3 = gamma.next_task(120)
    gamma.refuse(t3)
    st = fed.wait_study(sid, 180)
    with case("F3", "gamma declared rows=190, then round 2: params + 1e4 with num_examples "
                    "= 10**12", "weight capped/flagged; the model does not become the poison") \
            as c:
        from safetensors.numpy import load as st_load

        final = st_load(fed.artifact(sid, "model.safetensors"))
        history = json.loads(fed.artifact(sid, "history.json"))
        rows = {x["name"]: x["train_rows"] for x in history["sites"]}
        bound = history.get("example_bounds", {}).get("gamma", 0)
        share = bound / (bound + sum(v for k, v in rows.items() if k != "gamma"))
        shift = max(float(np.max(np.abs(final[k].astype(np.float64)
                                         - t2.parameters[k].astype(np.float64))))
                    for k in final)
        flag = (st["rounds"][1].get("sites_flagged") or {}).get("gamma", "")
        c.done(f"reply {r2.status_code}; study {st['status']}; gamma's weight capped to its "
               f"bound {bound} (declared 190 + 9); largest weight move {shift:.0f} = 1e4 x its "
               f"capped share {share:.2f} (uncapped: ~1e4); flag: {flag[:110]}",
               st["status"] == "completed" and f"capped to {bound}" in flag
               and abs(shift - 1e4 * share) < 50)
    if wanted("H-bad"):
        # A study's files leave only through the airlock: an export request for a path
        # outside the study's folder must be refused before anything is read.
        for cid, path in (("H-path1", "../hub.db"), ("H-path2", "../../hub.toml")):
            with case(cid, f"POST /v1/studies/<id>/exports artifact={path}", "4xx, nothing "
                      "outside the study's files") as c:
                r = fed.call("POST", f"/v1/studies/{sid}/exports",
                             json={"artifact": path, "reason": "audit"})
                c.done(f"{r.status_code} {r.text[:60]}", 400 <= r.status_code < 500)
    with case("F1b", "the study after F1's reply", "completed with gamma's valid reply") as c:
        c.done(f"{st['status']} {st.get('error') or ''}; round 1 completed by "
               f"{st['rounds'][0]['sites_completed'] if st['rounds'] else []}",
               st["status"] == "completed")


def _omop(fed: Fed, work: Path) -> None:
    import random

    from fedcare.demo.hospitals import write_hospitals

    contract, sites = write_hospitals(work / "omop")
    site = next(s for s in sites if s.name == "hospital-2")  # the OMOP hospital
    measurement = next((work / "omop").rglob("omop/measurement.csv"))
    good = measurement.read_bytes()
    for cid, what, bad in (("F15a", "measurement.csv cut at 500,000 bytes", good[:500_000]),
                           ("F15b", "5 KB of random bytes appended to measurement.csv",
                            good + random.Random(15).randbytes(5000))):
        measurement.write_bytes(bad)
        with case(cid, f"fedcare data check on an OMOP export with {what}",
                  "exit 2, one line, no traceback") as c:
            done = fed.cli("data", "check", "--contract", str(contract), "--data",
                           str(site.source))
            lines = [x for x in done.stderr.splitlines() if x.strip()]
            c.done(f"exit {done.returncode}; {len(lines)} line(s): {lines[:1]}",
                   done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr)
    measurement.write_bytes(good[:500_000])
    with case("F15c", "fedcare node start (site epsilon) with the cut OMOP export and one "
                      "good dataset", "the node keeps serving and reports the dataset "
              "unusable") as c:
        conf = fed.node_configs["epsilon"]
        conf.write_text(f'[datasets.cardio]\nsource = "{site.source}"\ncontract = '
                        f'"{contract}"\n\n' + conf.read_text())
        node = fed.start_node("epsilon", hooked=False)
        fed.wait_sites(["epsilon"], timeout=90)
        time.sleep(3)
        listed = {s["name"]: s for s in fed.call("GET", "/v1/sites").json()}
        ds = json.dumps(listed["epsilon"].get("datasets"))[:200]
        c.done(f"node alive: {node.alive()}; its datasets: {ds}", node.alive())


# ---------------------------------------------------------------------------------------------
# Session B: secure aggregation with hooked nodes (the audit's node_dump.py); hub
# --keep-replies. F6 + the update search, F2, F5, F7, F9.
# ---------------------------------------------------------------------------------------------

def session_b(work: Path) -> None:
    fed = Fed(work / "B")
    try:
        _session_b(fed)
    finally:
        fed.close()


def _train_rows(fed: Fed, cfg: dict[str, Any]) -> list[np.ndarray]:
    """Each site's training rows as its node holds them (same file, split and order)."""
    from fedcare.config import parse_config
    from fedcare.sim.runner import _Run

    data = cfg["data"]
    files = fed.tables[data["dataset"]]
    sim = {**cfg, "data": {"source": "files", "label": data["label"],
                           "features": data["features"], "standardize": False,
                           "test_fraction": data["test_fraction"],
                           "site": [{"name": s, "path": str(files[s])} for s in fed.sites]},
           "secure_aggregation": {"protocol": "none"}, "privacy": {"mode": "none"},
           "run": {"workers": 1}}
    run = _Run(parse_config(sim), None, None, False, False)
    run.prepare()
    return [s.x_train for s in run.sites]


def _hub_bytes(fed: Fed) -> bytes:
    files = [p for p in (fed.hub_dir / "data").rglob("*") if p.is_file()]
    return b"".join(p.read_bytes() for p in files) + b"".join(
        (p.log.read_bytes() if p.log.exists() else b"") for p in fed.procs if p.name == "hub")


def _session_b(fed: Fed) -> None:
    for site in fed.sites:
        fed.set_policy(site, "max_epsilon = 1000.0\ndelta = 1e-5\n")
    fed.start(None, "--keep-replies")

    if wanted("F6", "H-search"):
        from fedcare.data.standardize import site_sums

        cfg = study("secagg-std", rounds=2, data={"dataset": RAW_DATASET, "standardize": True},
                    secure_aggregation={"protocol": "secagg"})
        sid = fed.submit(cfg)
        st = fed.wait_study(sid, 180)
        if st["status"] != "completed":
            raise AuditError(f"secagg study {st['status']}: {st.get('error')}")
        raw = _hub_bytes(fed)
        with case("F6a", "secagg study, standardize = true, hub --keep-replies: search the "
                         "hub's db/blobs/log for each site's plain sum and sum of squares "
                         "(f4, f8, 2^-24 fixed point, text)", "no hit") as c:
            hits, keys = 0, 0
            for x in _train_rows(fed, cfg):
                _, total, total_sq = site_sums(x)
                for v in (total, total_sq):
                    for b in (v[:3].astype("<f4").tobytes(), v[:3].astype("<f8").tobytes(),
                              np.rint(v[:3] * 2.0**24).astype("<i8").tobytes(),
                              repr(float(v[0])).encode()):
                        keys += 1
                        hits += b in raw
            c.done(f"{hits} hits of {keys} keys in {len(raw) / 1e6:.2f} MB", hits == 0)
        with case("F6b", "decode the kept replies of r0/stats/* ", "protocol messages only, "
                  "no plain statistics") as c:
            import sqlite3

            from fedcare.core.params import ParamSpec
            from fedcare.core.wire import decode_reply
            from fedcare.engine.secure import PROTOCOL_AUX

            db = sqlite3.connect(fed.hub_dir / "data" / "hub.db")
            rows = db.execute("select blob_sha from replies where task_id like ?",
                              (f"{sid}/r0/stats/%",)).fetchall()
            db.close()
            kinds = []
            for (sha,) in rows:
                body = next((fed.hub_dir / "data").rglob(sha[2:])).read_bytes()
                u = decode_reply(body, ParamSpec({}), {PROTOCOL_AUX: None})
                kinds.append(sorted(u.aux))
            c.done(f"{len(rows)} stats replies, aux {kinds}",
                   bool(rows) and all(k == [PROTOCOL_AUX] for k in kinds))
        with case("H-search", "secagg: search the hub's db/blobs/log for each site's trained "
                  "model of each round (f4 and f8 bytes, dumped at the nodes)", "no hit") as c:
            hits, keys = 0, 0
            for dump in fed.hooks.glob(f"fit-*-{sid}-r*.npz"):
                with np.load(dump) as z:
                    for k in z.files:
                        v = z[k].ravel()
                        if v.size < 2:
                            continue
                        for b in (v.astype("<f4").tobytes(), v.astype("<f8").tobytes()):
                            keys += 1
                            hits += b in raw
            c.done(f"{hits} hits of {keys} keys", keys > 0 and hits == 0)

    dp = {"mode": "dp_fedavg_distributed", "clip": 1.0, "noise_multiplier": 1.0}
    if wanted("F2"):
        fed.hold("gamma", "sa_mask", 2)
        sid = fed.submit(study("kill9", rounds=2, secure_aggregation={"protocol": "secagg"},
                               privacy=dp, strategy={"min_completed": 2}))
        held = fed.held("gamma", 180)
        fed.kill_hub()
        fed.start_hub("--keep-replies")
        fed.release("gamma")
        st = fed.wait_study(sid, 180)
        with case("F2a", f"secagg + distributed DP; hub SIGKILLed while gamma holds {held}; "
                         "hub restarted", "the study completes; each node trained each round "
                  "once") as c:
            fits = {s: fed.fits(s, sid) for s in fed.sites}
            c.done(f"{st['status']} {st.get('error') or ''}; trainings per round {fits}",
                   st["status"] == "completed"
                   and all(f == {1: 1, 2: 1} for f in fits.values()))
        with case("F2b", "the same: each site's privacy ledger", "one entry per round") as c:
            per = {s: [e["round"] for e in fed.ledger(s, sid)] for s in fed.sites}
            c.done(f"ledger rounds {per}", all(v == [1, 2] for v in per.values()))

    if wanted("F5"):
        with case("F5", "3 sites, secagg, min_completed 2 (the demo's shape); gamma's node "
                        "SIGKILLed in round 2's sa_mask and restarted", "round 2 completes "
                  "with 2 sites; the study completes") as c:
            fed.hold("gamma", "sa_mask", 2)
            sid = fed.submit(study("dropout", rounds=3, secure_aggregation={
                "protocol": "secagg"}, strategy={"min_completed": 2}))
            fed.held("gamma", 180)
            fed.nodes["gamma"].kill()
            fed.start_node("gamma")
            st = fed.wait_study(sid, 180)
            per = {r["round"]: r["sites_completed"] for r in st["rounds"]}
            c.done(f"{st['status']} {st.get('error') or ''}; completed per round {per}",
                   st["status"] == "completed" and len(per) == 3)

    if wanted("F7", "F9"):
        # nodes restarted with require_dp policies
        for site in fed.sites:
            fed.nodes[site].kill()
            fed.set_policy(site, "max_epsilon = 1000.0\ndelta = 1e-5\nrequire_dp = true\n")
            fed.start_node(site)
        time.sleep(2)
        fed.wait_sites(list(fed.sites))
        cfg = study("dp-std", rounds=2, data={"dataset": RAW_DATASET, "standardize": True},
                    privacy=dp, secure_aggregation={"protocol": "secagg"},
                    run={"round_timeout": 120})
        with case("F7", "dp_fedavg_distributed + secagg + standardize = true, nodes with "
                        "require_dp = true", "runs (or refused at submission with the "
                  "reason)") as c:
            r = fed.call("POST", "/v1/studies", json=cfg)
            why = f"without stats_clip: {r.status_code} {r.json().get('detail', '')[:80]}"
            cfg["data"]["stats_clip"] = RANGES
            sid = fed.submit(cfg)
            st = fed.wait_study(sid, 240)
            done = [r["sites_completed"] for r in st["rounds"]]
            c.done(f"{why}; with stats_clip: {st['status']} {st.get('error') or ''}, "
                   f"completed {done}", r.status_code == 422 and st["status"] == "completed"
                   and all(len(d) == 3 for d in done))
        if wanted("F9"):
            _ledger_cases(fed)


def _rechain(path: Path) -> None:
    out, prev = [], "0" * 64
    for line in path.read_bytes().splitlines():
        doc = json.loads(line)
        doc["noise_multiplier"], doc["prev"] = 100.0, prev
        new = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        out.append(new + b"\n")
        prev = hashlib.sha256(new).hexdigest()
    path.write_bytes(b"".join(out))


def _ledger_cases(fed: Fed) -> None:
    from fedcare.node.ledger_anchor import ANCHOR_FILE

    state = fed.state("alpha")
    ledger = state / "privacy-ledger.jsonl"
    lines = ledger.read_bytes().splitlines()
    head = f"{len(lines)}:{hashlib.sha256(lines[-1]).hexdigest()}"

    def anchored() -> bool:
        with Rogue(fed.url, "alpha", fed.kit("alpha")) as a:
            return a.http.get("/v1/node/ledger-head").json().get("ledger_head") == head

    fed.wait("the hub to anchor alpha's ledger head", anchored, 60)
    fed.nodes["alpha"].kill()
    original = ledger.read_bytes()

    def privacy() -> tuple[int, str]:
        done = fed.cli("node", "privacy", "--kit", str(fed.kit("alpha")), "--data",
                       str(fed.node_configs["alpha"]), "--state-dir", str(state))
        return done.returncode, (done.stdout + done.stderr).strip()[:300]

    def cut(n: int) -> Any:
        return lambda p: p.write_bytes(b"".join(p.read_bytes().splitlines(True)[:-n]))

    def edit_last(p: Path) -> None:
        ls = p.read_bytes().splitlines(True)
        doc = json.loads(ls[-1])
        doc["noise_multiplier"] = float(doc.get("noise_multiplier") or 0) + 50.0
        ls[-1] = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        p.write_bytes(b"".join(ls))

    def edit_first(p: Path) -> None:
        ls = p.read_bytes().splitlines(True)
        ls[0] = ls[0].replace(b'"round":', b'"round": ', 1)
        p.write_bytes(b"".join(ls))

    code, line = privacy()
    with case("H-ledger0", "fedcare node privacy on alpha's untouched ledger", "exit 0") as c:
        c.done(f"exit {code}: {line}", code == 0)
    for cid, what, tamper in (("F9a", "edit the last line", edit_last),
                              ("F9b", "delete the last 2 lines", cut(2)),
                              ("F9c", "delete the ledger file", lambda p: p.unlink()),
                              ("F9d", "rewrite every line with the chain recomputed", _rechain),
                              ("H-ledger1", "edit line 1", edit_first)):
        ledger.write_bytes(original)
        tamper(ledger)
        (state / ANCHOR_FILE).unlink(missing_ok=True)  # the node's own copy goes too
        with case(cid, f"alpha's ledger: {what} (and the node's anchor copy removed); "
                       "fedcare node privacy", "exit 1 (tampering found)") as c:
            code, line = privacy()
            c.done(f"exit {code}: {line}", code == 1)
    ledger.write_bytes(original)


# ---------------------------------------------------------------------------------------------
# In-process and CLI cases: F8, F10b, F14, F16, F20, F21
# ---------------------------------------------------------------------------------------------

def in_process(work: Path) -> None:
    if wanted("F8"):
        with case("F8", "a node's DP-SGD learner fits twice with seed site_round_seed(7, 1, 0);"
                        " the hub recomputes the Poisson sample from public facts",
                  "different rows each time, not the hub's") as c:
            first, second, hub = _dpsgd_batches()
            c.done(f"fit 1 rows {first[:6]}..., fit 2 rows {second[:6]}..., hub's "
                   f"{hub[:6]}...", first != second and hub not in (first, second))
    if wanted("F10"):
        with case("F10b", "CKKS: a deviating hub sends hospital-1's own signed ciphertext to "
                          "hospital-2 as the sum (included = all 3)", "refused") as c:
            c.done(*_ckks_single(work))


def _dpsgd_batches() -> tuple[list[int], list[int], list[int]]:
    import torch  # noqa: F401

    from fedcare.config import parse_config
    from fedcare.core.messages import TrainConfig
    from fedcare.core.seeds import site_round_seed
    from fedcare.engine.learner_factory import ModelShape, make_learner
    from fedcare.learners.torch_learner import dp_sgd_sample_rate

    rows, batch, seed = 120, 16, site_round_seed(7, 1, 0)
    cfg = parse_config({
        "study": {"name": "dpsgd", "seed": 7, "rounds": 3},
        "data": {"source": "federation", "dataset": "breast", "label": "target",
                 "features": [f"f{i}" for i in range(8)], "standardize": False},
        "model": {"name": "logreg"}, "train": {"batch_size": batch, "lr": 0.1},
        "privacy": {"mode": "dp_sgd", "clip": 1.0, "noise_multiplier": 1.1, "delta": 1e-5}})

    def first_batch() -> list[int]:
        learner = make_learner(cfg, ModelShape.of_federated(cfg.data), rows=rows, seeded=False)
        seen: list[list[int]] = []
        handle = learner.model.register_forward_pre_hook(  # type: ignore[attr-defined]
            lambda _m, a: seen.append(sorted(int(v) for v in a[0][:, 0].tolist())))
        x = np.random.default_rng(1).normal(size=(rows, 8)).astype(np.float32)
        y = (x[:, 1] > 0).astype(np.float32)
        x[:, 0] = np.arange(rows)
        try:
            learner.fit(learner.initial_parameters(), x, y,
                        TrainConfig(batch_size=batch, lr=0.1), seed=seed)
        finally:
            handle.remove()
        return seen[0]

    q = dp_sgd_sample_rate(rows, batch)
    hub = np.flatnonzero(np.random.default_rng(seed).random(rows) < q).tolist()
    return first_batch(), first_batch(), hub


def _ckks_single(work: Path) -> tuple[str, bool]:
    from fedcare.core.errors import FedcareError
    from fedcare.core.messages import Task, TaskKind
    from fedcare.core.params import Parameters
    from fedcare.engine.ckks_custody import FixedKeys, SiteIdentity
    from fedcare.engine.secure import PROTOCOL_AUX, SecureSettings, SecureSite
    from fedcare.hub.provisioning import create_federation
    from fedcare.privacy.he import create_federation_context

    sites = ["hospital-1", "hospital-2", "hospital-3"]
    meta = {"secure": "ckks", "participants": sites}
    create_federation(work / "ckks" / "fed", hub_host="127.0.0.1", sites=sites,
                      site_kits=work / "ckks" / "kits")
    ids = {s: SiteIdentity.from_kit(work / "ckks" / "kits" / s) for s in sites}
    secret = create_federation_context()[0]
    vectors = {"hospital-1": np.array([10.5, -3.25, 7.0, 0.125, 42.0]),
               "hospital-2": np.ones(5), "hospital-3": np.full(5, 2.0)}
    answers, b = {}, None
    for name in sites:
        site = SecureSite(name, SecureSettings("ckks"), sites, identity=ids[name],
                          keys=FixedKeys(secret))
        fit = Task(task_id=f"s/r1/fit/{name}", study="s", round=1, site=name,
                   kind=TaskKind.FIT, parameters=Parameters({"w": np.zeros(4, np.float32)}),
                   meta=meta)
        answers[name] = dict(site.start(fit, vectors[name])[PROTOCOL_AUX].items())
        if name == "hospital-2":
            b = site
    assert b is not None
    out = []
    refused_all = True
    for what, arrays in (
            ("hospital-1's ciphertext as 'ct'", {"ct": answers["hospital-1"]["ct"]}),
            ("hospital-1's signed contribution alone",
             {f"{k}.hospital-1": v for k, v in answers["hospital-1"].items()})):
        task = Task(task_id="s/r1/he_decrypt/hospital-2", study="s", round=1,
                    site="hospital-2", kind=TaskKind.HE_DECRYPT, parameters=Parameters({}),
                    aux={PROTOCOL_AUX: Parameters(arrays, allow_integer=True)},
                    meta={**meta, "included": sites})
        try:
            got = b.step(task)
            out.append(f"{what}: DECRYPTED {got!r:.80}")
            refused_all = False
        except FedcareError as exc:
            out.append(f"{what}: refused ({type(exc).__name__}: {str(exc)[:70]})")
    return "; ".join(out), refused_all


def cli_cases(work: Path) -> None:
    root = work / "cli"
    root.mkdir()
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}

    def fedcare(*args: str, timeout: float = 180, cwd: Path = root
                ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fedcare.cli.main", *args], cwd=cwd,
                              capture_output=True, text=True, timeout=timeout, env=env)

    base = ('[study]\nname = "{name}"\nrounds = 1\n[data]\nsource = "builtin"\n'
            'dataset = "breast_cancer"\nsites = 2\n[model]\nname = "logreg"\n[train]\n{train}\n'
            '[baselines]\nlocal = false\ncentralized = false\n')
    if wanted("F20"):
        for cid, name in (("F20a", "../../escaped-audit"),
                          ("F20b", str(work / "abs-escaped-audit"))):
            with case(cid, f"fedcare simulate with study.name = {name!r}, no --out",
                      "output under ./runs/ (or refused)") as c:
                run = root / cid
                run.mkdir()
                (run / "cfg.toml").write_text(base.format(name=name, train=""))
                done = fedcare("simulate", "cfg.toml", cwd=run)
                escaped = (run / "runs" / name).resolve()
                outside = escaped.exists() and not str(escaped).startswith(str(run / "runs"))
                inside = sorted(p.name for p in (run / "runs").iterdir()) \
                    if (run / "runs").exists() else []
                c.done(f"exit {done.returncode}; under runs/: {inside}; outside: "
                       f"{'written' if outside else 'nothing'}",
                       not outside and (done.returncode == 2 or bool(inside)))
    if wanted("F21"):
        for cid, train in (("F21a", "lr = inf"), ("F21b", "local_epochs = 1000000000")):
            with case(cid, f"fedcare simulate with train.{train}", "exit 2 naming the key") \
                    as c:
                (root / f"{cid}.toml").write_text(base.format(name=cid, train=train))
                t0 = time.monotonic()
                try:
                    done = fedcare("simulate", f"{cid}.toml", "--out", str(root / cid),
                                   timeout=120)
                    err = [x.strip() for x in done.stderr.splitlines() if x.strip()][:2]
                    c.done(f"exit {done.returncode} in {time.monotonic() - t0:.1f} s: {err}",
                           done.returncode == 2)
                except subprocess.TimeoutExpired:
                    c.done("still running after 120 s (killed)", False)
    if wanted("H-names"):
        from fedcare.hub.provisioning import create_federation

        create_federation(root / "names", hub_host="127.0.0.1")
        ok = fedcare("node", "init", "--site", "okname", "--out", str(root / "ok-kit"))
        if ok.returncode != 0:
            raise AuditError(f"node init: {ok.stderr}")
        csr = str(root / "ok-kit" / "site.csr")
        for i, name in enumerate(("../evil", "a/b", "..%2f", ".hidden", "site;rm -rf", "-rf")):
            with case(f"H-name{i + 1}", f"fedcare node init --site {name!r}, and fedcare "
                      f"provision add-site with that name (a valid CSR)",
                      "both refused (exit 2), nothing created") as c:
                kit = root / f"bad-kit-{i}"
                init = fedcare("node", "init", f"--site={name}", "--out", str(kit), timeout=60)
                add = fedcare("provision", "add-site", str(root / "names"), "--csr", csr,
                              "--", name, timeout=60)
                sites = sorted(p.name for p in (root / "names" / "sites").iterdir()) \
                    if (root / "names" / "sites").exists() else []
                c.done(f"node init exit {init.returncode} ({init.stderr.strip()[:70]}); "
                       f"add-site exit {add.returncode} ({add.stderr.strip()[:70]}); "
                       f"sites {sites}; kit written: {(kit / 'site.key').exists()}",
                       init.returncode == 2 and add.returncode == 2 and not sites
                       and not (kit / "site.key").exists())
    if wanted("F16"):
        with case("F16", "fedcare hub start --data-dir on a read-only bind mount of a hub's "
                         "state", "exit 2, one line") as c:
            if not is_root() or shutil.which("unshare") is None:
                c.skip("needs root and unshare (bind mount)")
            else:
                c.done(*_readonly(work))
    if wanted("F14"):
        with case("F14", "hub --data-dir on an 8 MB tmpfs filled up during a 6-round MLP "
                         "study; grow it, restart the hub, fedcare study resume",
                  "paused with a reason; resumes and completes") as c:
            if not is_root():
                c.skip("needs root (tmpfs)")
            else:
                c.done(*_disk_full(work))


def _readonly(work: Path) -> tuple[str, bool]:
    from fedcare.hub.provisioning import create_federation
    from fedcare.hub.service import HubService, NeverRevoked

    root = work / "ro"
    create_federation(root / "fed", hub_host="127.0.0.1", sites=["alpha"],
                      site_kits=root / "kits")
    src, ro = root / "hubdata", root / "ro"
    state = HubService(src, revocation=NeverRevoked())
    state.event("audit", "some state, as a hub that ran here leaves it")
    state.db.dispose()
    ro.mkdir()
    from fed import free_port

    hub = " ".join([sys.executable, "-m", "fedcare.cli.main", "hub", "start", "--kit",
                    str(root / "fed" / "hub"), "--port", str(free_port()), "--data-dir",
                    str(ro)])
    # a private mount namespace: the mount goes away with the command
    done = subprocess.run(["unshare", "-m", "sh", "-c",
                           f"mount --bind {src} {ro} && mount -o remount,bind,ro {ro} && "
                           f"touch {ro}/probe 2>/dev/null && exit 99; exec {hub}"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})
    if done.returncode == 99:
        raise AuditError("the bind mount was not read-only")
    lines = [x for x in done.stderr.splitlines() if x.strip()]
    return (f"exit {done.returncode}; {len(lines)} line(s): {lines[:1]}",
            done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr)


def _disk_full(work: Path) -> tuple[str, bool]:
    small = work / "small"
    small.mkdir()

    def mount(*a: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["mount", *a], capture_output=True, text=True, timeout=30)

    m = mount("-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(small))
    if m.returncode != 0:
        raise AuditError(f"cannot mount a tmpfs: {m.stderr.strip()}")
    fed = Fed(work / "F14", sites=("alpha", "beta"))
    try:
        data_dir = small / "hubdata"
        fed.start(None, "--data-dir", str(data_dir))
        stat = os.statvfs(small)
        with open(small / "ballast", "wb") as fh:
            fh.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - 1_400_000))
        sid = fed.submit(study("diskfull", rounds=6, model={"name": "mlp",
                                                            "hidden": [256, 256]},
                               run={"round_timeout": 240}))
        assert fed.hub is not None
        fed.wait("the study to stop on the full disk",
                 lambda: fed.status(sid)["status"] != "running"
                 or "cannot record it" in fed.hub.tail(200_000), 300)  # type: ignore[union-attr]
        if fed.status(sid)["status"] == "running":
            mount("-o", "remount,size=256m", str(small))
            fed.wait_study(sid, 120)
        st = fed.status(sid)
        paused = (st["status"], st["current_round"], (st.get("error") or "")[:70])
        fed.kill_hub()
        mount("-o", "remount,size=256m", str(small))
        fed.start_hub("--data-dir", str(data_dir))
        after_restart = fed.status(sid)["status"]
        done = fed.cli("study", "resume", sid, "--federation", str(fed.root / "fed"))
        end = fed.wait_study(sid, 300)
        return (f"stopped as {paused}; after restart {after_restart}; resume exit "
                f"{done.returncode}; end {end['status']} at round {end['current_round']}",
                paused[0] == "paused" and after_restart == "paused"
                and end["status"] == "completed")
    finally:
        fed.close()
        if mount_umount(small) != 0:
            subprocess.run(["umount", "-l", str(small)], capture_output=True, timeout=30)


def mount_umount(folder: Path) -> int:
    return subprocess.run(["umount", str(folder)], capture_output=True, timeout=30).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated findings, e.g. F1,F6,H-bad")
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: a temp dir)")
    args = parser.parse_args()
    ONLY.update(x for x in args.only.split(",") if x)
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(
        TimeoutError(f"the audit run exceeded {WATCHDOG} s")))
    signal.alarm(WATCHDOG)
    t0 = time.monotonic()
    work = args.keep or Path(tempfile.mkdtemp(prefix="fedcare-audit-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"# work folder {work}", flush=True)
    for session in (in_process, cli_cases, session_a, session_b):
        try:
            session(work)
        except Exception as exc:  # noqa: BLE001 (one session's failure is reported)
            print(f"# session {session.__name__} stopped: {type(exc).__name__}: {exc}",
                  flush=True)
            RESULTS.append((session.__name__, "ERROR"))
    signal.alarm(0)
    counts = {v: sum(1 for _, x in RESULTS if x == v)
              for v in ("HELD", "FAILED", "SKIPPED", "ERROR")}
    print(f"# {len(RESULTS)} cases: {counts['HELD']} held, {counts['FAILED']} failed, "
          f"{counts['SKIPPED']} skipped, {counts['ERROR']} error; "
          f"{time.monotonic() - t0:.0f} s", flush=True)
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if counts["FAILED"] == counts["ERROR"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
