"""The node's main loop: outbound HTTPS only, long-polling the hub for work.

A hospital opens no inbound port: the node dials the hub with its site certificate, asks
for the next task (the hub holds the request open until there is one), runs it with the same
:class:`SiteExecutor` simulation uses, and posts the reply. Connection trouble is met with
exponential backoff, never a crash; ``HTTPS_PROXY`` is honoured (see :mod:`fedcare.node.hub_link`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedcare import __version__
from fedcare.config import FederatedData, StudyConfig, content_hash, parse_config
from fedcare.core.errors import FedcareError, TransportError
from fedcare.core.messages import ErrorReply
from fedcare.core.wire import DIGEST_HEADER, encode_error, payload_digest, read_message
from fedcare.data.imaging import image_site_data
from fedcare.engine.executor import SiteExecutor
from fedcare.engine.registry import dataset_digest
from fedcare.engine.study import site_executor
from fedcare.governance.approvals import Decision
from fedcare.learners.options import check_bins_vs_rows
from fedcare.node.approval_sync import ApprovalSync
from fedcare.node.approvals import ApprovalStore
from fedcare.node.audit import NodeAudit, spent_epsilon
from fedcare.node.hub_link import HubLink, HubResponse, LinkError
from fedcare.node.ledger_anchor import ANCHOR_FILE, LedgerAnchor, ledger_key
from fedcare.node.local_config import NodeData, load_node_data
from fedcare.node.site_data import (
    ClinicalTable,
    build_clinical_table,
    build_site_data,
    clinical_site_data,
)
from fedcare.node.site_policy import NodePolicy

if TYPE_CHECKING:
    from fedcare.engine.ckks_custody import SiteIdentity, StudyKeys
    from fedcare.engine.custom_learner import CodeRun, SiteCodeSettings

log = logging.getLogger("fedcare.node")
SHA_HEADER = "X-Content-SHA256"


@dataclass
class _Study:
    config: StudyConfig
    config_hash: str
    executor: SiteExecutor | None
    refusal: str | None


class NodeAgent:
    def __init__(self, kit_dir: Path, data_config: Path, *, state_dir: Path | None = None,
                 poll_wait: float = 20.0) -> None:
        from fedcare.pki.trust import client_ssl_context, load_node_config

        self.kit = load_node_config(kit_dir)
        self.kit_dir = Path(kit_dir)
        self.site = self.kit.site
        self.data: NodeData = load_node_data(data_config)
        self.state_dir = state_dir or Path(kit_dir) / "state"
        self.poll_wait = poll_wait
        self.session = uuid.uuid4().hex
        self.http = HubLink(self.kit.hub_url, client_ssl_context(kit_dir), connect_timeout=10.0,
                            read_timeout=poll_wait + 30.0,
                            user_agent=f"fedcare-node/{__version__}")
        self._studies: dict[str, _Study] = {}
        #: The last task this node answered (its payload digest) and the reply. A hub that
        #: restarts mid-round asks the round's sites again (it holds replies in memory only,
        #: unless it keeps them), and the identical task must get the identical answer: not
        #: a second training, which would cost the time, charge the site's privacy budget
        #: again and, under secure aggregation, be refused.
        self._last: tuple[str, tuple[str, bytes]] | None = None
        self._clinical: dict[str, ClinicalTable] = {}
        self.stop_event = threading.Event()
        self.ledger = self._ledger()
        #: The site's own signed audit log (fedcare.node.audit), signed with its site key.
        self.audit = NodeAudit(self.site, self.kit.tls.key, self.state_dir, background=True)
        #: The site's own policy file (fedcare.node.site_policy): an invalid one stops the
        #: node here; a missing one refuses every study.
        self.site_policy = NodePolicy(self.data.site_policy, self.site, Path(data_config),
                                      self.audit)
        #: The ledger heads the hub acknowledged (None: the site keeps no ledger).
        self.anchor = (LedgerAnchor(self.ledger, self.state_dir / ANCHOR_FILE)
                       if self.ledger is not None else None)
        self._check_ledger()
        #: The steward's decisions (``fedcare node approve|reject|revoke``), read on every
        #: task; kept in step with the hub by :attr:`sync` (its own thread and connection).
        self.approvals = ApprovalStore.in_state_dir(self.state_dir)
        self.sync = ApprovalSync(
            self.site, HubLink(self.kit.hub_url, client_ssl_context(kit_dir),
                               connect_timeout=10.0, read_timeout=30.0,
                               user_agent=f"fedcare-node/{__version__}"),
            self.approvals, self.audit, preapproved=self.data.approves)

    def _ledger(self) -> Any:
        """The site's privacy ledger under its own policy (None: no [privacy] policy), signed
        with the site's key from its startup kit."""
        if self.data.privacy_policy is None:
            log.warning("site %s has no privacy policy ([privacy] policy = ...): it keeps no "
                        "privacy budget", self.site)
            return None
        from fedcare.privacy.dp.ledger import PrivacyLedger, SitePrivacyPolicy

        policy = SitePrivacyPolicy.load(self.data.privacy_policy)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        return PrivacyLedger(self.state_dir / "privacy-ledger.jsonl", policy,
                             key=ledger_key(self.kit_dir))

    def _check_ledger(self) -> None:
        """Say at once (at start, and when the hub's anchor arrives) that the ledger fails
        its checks; every task that would charge it is refused meanwhile."""
        problems = self.anchor.problems() if self.anchor is not None else []
        if problems:
            log.error("privacy ledger %s fails verification; this site refuses every task "
                      "that would charge it until its steward restores the ledger "
                      "(`fedcare node privacy` shows the details): %s", self.ledger.path,
                      "; ".join(problems))

    def _ledger_headers(self) -> dict[str, str]:
        return self.anchor.headers() if self.anchor is not None else {}

    def _acknowledged(self, r: HubResponse) -> None:
        """Keep the ledger head the hub acknowledged in a hello answer or reply receipt."""
        if self.anchor is None:
            return
        with contextlib.suppress(ValueError, AttributeError):
            self.anchor.acknowledged(r.json().get("ledger_head"))

    # -- hub calls ------------------------------------------------------------------------
    def hello(self) -> None:
        datasets = [self._describe(name, path) for name, path in sorted(self.data.datasets.items())]
        r = self.http.request("POST", "/v1/node/hello", json={
            "version": __version__, "session": self.session, "datasets": datasets},
            headers=self._ledger_headers())
        _raise_for(r)
        self._acknowledged(r)
        self._check_ledger()

    def poll(self) -> tuple[str, bytes, str] | None:
        """The next task: its study, payload and payload digest (None: nothing yet)."""
        r = self.http.request("GET", "/v1/node/task", params={"wait": self.poll_wait})
        if r.status_code == 204:
            return None
        _raise_for(r)
        body = r.content
        digest = payload_digest(body)
        if digest != r.headers.get(DIGEST_HEADER):
            raise TransportError("task payload failed its sha256 check (corrupted in transit)")
        return r.headers["X-Fedcare-Study"], body, digest

    def send(self, task_id: str, reply: bytes) -> None:
        r = self.http.request("POST", "/v1/node/reply", params={"task_id": task_id},
                              content=reply,
                              headers={SHA_HEADER: hashlib.sha256(reply).hexdigest(),
                                       "Content-Type": "application/octet-stream",
                                       **self._ledger_headers()})
        if r.status_code in (409, 410):  # duplicate or late: the hub already settled this task
            log.info("hub declined reply for %s: %s", task_id, r.text)
            return
        _raise_for(r)
        self._acknowledged(r)

    def _describe(self, name: str, path: Path) -> dict[str, Any]:
        """What the hub may know of a dataset: its name and row count and, for a clinical
        dataset, its contract hash and small-cell-suppressed quality report."""
        if name not in self.data.clinical:  # images: label-file rows and digest
            return {"name": name, "rows": _count_rows(path), "digest": _file_digest(path)}
        try:
            built = self.clinical(name)
        except Exception as exc:
            # Whatever is wrong with the site's own files, the node goes on serving its other
            # datasets. The detail (which may name a patient or a small count) stays in the
            # site's log.
            if isinstance(exc, FedcareError):
                log.error("dataset %s cannot be built: %s", name, exc)
            else:  # not a known data problem: keep the traceback for whoever investigates
                log.exception("dataset %s cannot be built", name)
            return {"name": name, "rows": 0,
                    "quality": {"error": f"the site could not build this dataset "
                                         f"({type(exc).__name__}); details are in the node's log"}}
        if built.violations:
            log.warning("dataset %s fails its contract's minimum quality; studies on it will "
                        "be refused: %s", name, "; ".join(built.violations))
        # The cohort size rounded down to 10: exact, it would let the hub recover suppressed
        # cells of the report's attrition by subtraction.
        return {"name": name, "rows": built.rows // 10 * 10,
                "contract_hash": built.contract_hash, "digest": dataset_digest(*built.arrays()),
                "quality": {**built.report, "violations": built.violations}}

    def clinical(self, name: str) -> ClinicalTable:
        """The clinical dataset ``name`` built from the site's records (once per process)."""
        if name not in self._clinical:
            src = self.data.clinical[name]
            self._clinical[name] = build_clinical_table(src.source, src.contract, self.site)
        return self._clinical[name]

    # -- work -----------------------------------------------------------------------------
    def approved(self, digest: str) -> bool:
        """Whether the site approves the study with exactly this content hash now: the
        steward's latest decision (``fedcare node approve|reject|revoke``), else a listing in
        the site's ``[approval] studies``. Read on every task, so it takes effect at once."""
        got = self.approvals.decision(digest)
        if got is not None:
            return got.decision is Decision.APPROVED
        return self.data.approves(digest)

    def _not_approved(self, name: str, digest: str) -> str:
        got = self.approvals.decision(digest)
        if got is not None and got.decision is not Decision.APPROVED:
            why = f": {got.reason}" if got.reason else ""
            return (f"site {self.site} {got.decision.value} study {name!r} (content hash "
                    f"{digest}){why}")
        return (f"site {self.site} has not approved study {name!r} (content hash {digest}); "
                f"its data steward approves it with `fedcare node approve {digest[:12]}`")

    def _tell_refused(self, study_id: str, digest: str, why: str) -> None:
        """Tell the hub at once that this site refuses the study (the researcher sees it in
        `fedcare study status`); a failure to tell is logged, the task is refused anyway."""
        try:
            r = self.http.request("POST", "/v1/node/decisions", json={
                "study_id": study_id, "content_hash": digest,
                "decision": Decision.REFUSED.value, "reason": why[:2000]})
            if r.status_code >= 400:
                log.warning("the hub declined this site's refusal of %s: %s", study_id,
                            r.text[:300])
        except (LinkError, TransportError) as exc:
            log.warning("could not tell the hub this site refuses %s: %s", study_id, exc)

    def study(self, study_id: str) -> _Study:
        if study_id in self._studies and not self.site_policy.stale(study_id):
            return self._studies[study_id]
        r = self.http.request("GET", f"/v1/node/studies/{study_id}")
        _raise_for(r)
        doc = r.json()
        cfg = parse_config(doc["config"])
        digest = content_hash(cfg)  # recomputed here: the site never trusts the hub's word
        entry = _Study(cfg, digest, None, None)
        if not self.approved(digest):
            # Another config than the one approved (changed by a byte?) is pending again:
            # the steward sees it in `fedcare node studies`. Not kept: an approval made
            # later takes effect at the next task.
            if self.sync.seen(doc) is not None and self.approvals.decision(digest) is None:
                self._tell_refused(study_id, digest, self._not_approved(cfg.study.name, digest))
            entry.refusal = self._not_approved(cfg.study.name, digest)
            self.audit.study_loaded(study_id, cfg.study.name, digest,
                                    getattr(cfg.data, "dataset", None), entry.refusal)
            return entry
        if not isinstance(cfg.data, FederatedData):
            entry.refusal = "study data source is not 'federation'"
        elif cfg.data.dataset not in self.data.datasets:
            entry.refusal = f"site {self.site} holds no dataset named {cfg.data.dataset!r}"
        else:
            sites = doc.get("sites")
            if not isinstance(sites, list) or self.site not in sites:
                raise FedcareError(f"study {study_id} does not list site {self.site}")
            if cfg.data.sites is not None and not set(sites) <= set(cfg.data.sites):
                # The approved study names its sites: the hub may not add others (they would
                # join secure-aggregation rounds and change every site's noise share).
                extra = sorted(set(sites) - set(cfg.data.sites))
                raise FedcareError(f"the hub lists sites {extra} that the approved study "
                                   "does not name")
            index = sites.index(self.site)
            if cfg.data.dataset in self.data.images:
                folder = self.data.images[cfg.data.dataset]
                if cfg.data.image_size is None:
                    raise FedcareError(f"dataset {cfg.data.dataset!r} holds images but the "
                                       "study sets no data.image_size")
                data = image_site_data(folder.folder, folder.labels, site=self.site,
                                       size=cfg.data.image_size,
                                       test_fraction=cfg.data.test_fraction,
                                       seed=cfg.study.seed, site_index=index,
                                       num_classes=cfg.data.classes)[0]
            elif cfg.data.dataset in self.data.clinical:
                data = clinical_site_data(cfg.data, self.site, index, cfg.study.seed,
                                          self.clinical(cfg.data.dataset))
            else:
                data = build_site_data(cfg.data, self.site, index, cfg.study.seed,
                                       self.data.datasets[cfg.data.dataset],
                                       self.data.test_paths.get(cfg.data.dataset))
            refused = self.site_policy.refusal(study_id, cfg, digest, data, len(sites),
                                               self.ledger)
            entry.refusal = refused or check_bins_vs_rows(cfg.model, len(data.y_train),
                                                          self.site)
            if refused is None:  # a study the site's policy refuses never trains here
                identity, keys = self._ckks_custody(study_id, cfg, sites)
                entry.executor = site_executor(cfg, data, index, sites, ledger=self.ledger,
                                               identity=identity, keys=keys,
                                               state_dir=self.state_dir / study_id,
                                               local_baseline=cfg.baselines.local_at_sites,
                                               baseline_refusal=self._baseline_refusal(),
                                               code=self._code_settings(study_id),
                                               release=self.site_policy.gate())
        self._studies[study_id] = entry
        if entry.refusal is not None:  # the node's own no (policy, data): the hub is told
            self.approvals.saw(study_id, digest, cfg.study.name, doc["config"],
                               [str(s) for s in doc.get("sites") or []])
            self.approvals.refuse(digest, entry.refusal)
        self.audit.study_loaded(study_id, cfg.study.name, digest, getattr(cfg.data, "dataset",
                                                                          None), entry.refusal)
        return entry

    def _code_settings(self, study_id: str) -> SiteCodeSettings:
        """How this site runs a study's own code: the sandbox's weaker mode only if its node
        config allows it ([sandbox] allow_weaker), and every failed run written to the site's
        audit log (the run's status and fedcare's reason; the code's own output stays in the
        node's log)."""
        from fedcare.engine.custom_learner import SiteCodeSettings

        def observe(run: CodeRun) -> None:
            if not run.ok:
                self.audit.study_code_failed(study_id, run.op, run.status, run.reason,
                                             run.seconds)
        return SiteCodeSettings(allow_weaker=self.data.sandbox_allow_weaker, on_run=observe)

    def _baseline_refusal(self) -> str | None:
        """Why this site will not train a study's model alone when the hub asks (None: it
        will, if the approved study asks for local-only baselines at all). Refused when the
        site's node config says ``[baselines] local = false``, or when its privacy policy
        says ``require_dp = true``: the local-only model trains without DP (a reference, as
        in simulation) and its held-out metrics are not covered by the study's epsilon.
        Under DP-SGD the baseline trains with the study's model without DP; nothing is
        charged to the ledger."""
        if not self.data.local_baselines:
            return (f"site {self.site} does not train local-only baselines (its node "
                    "config says [baselines] local = false)")
        if self.ledger is not None and self.ledger.policy.require_dp:
            return (f"site {self.site}'s privacy policy requires DP (require_dp = true) "
                    "and a local-only baseline trains without DP")
        return None

    def _ckks_custody(self, study_id: str, cfg: StudyConfig, sites: list[str]
                      ) -> tuple[SiteIdentity | None, StudyKeys | None]:
        """This site's custody of a CKKS study's key (None, None: the study does not use
        CKKS). The secure-aggregation settings come from the study the site approved, never
        from a task. Under CKKS the study's key is made among its sites (never at the hub or
        the coordinator) and every ciphertext is signed with this site's key
        (:mod:`fedcare.engine.ckks_custody`)."""
        if cfg.secure_aggregation.protocol != "ckks":
            return None, None
        from fedcare.engine.ckks_custody import SiteIdentity
        from fedcare.node.ckks_keys import RelayKeys

        identity = SiteIdentity.from_kit(self.kit_dir)
        return identity, RelayKeys(self.http.request, identity, sites,
                                   self.state_dir / study_id)

    def answer(self, study_id: str, payload: bytes, digest: str) -> tuple[str, bytes]:
        """The reply to a task (task id, bytes): the one already computed when the hub asks
        the same task again (same digest), else :meth:`handle`'s."""
        if self._last is not None and self._last[0] == digest:
            log.info("task %s asked again (the hub restarted?): sending the same reply",
                     self._last[1][0])
            return self._last[1]
        before = spent_epsilon(self.ledger)
        reply = self.handle(study_id, payload)
        self._last = (digest, reply)
        self.audit.task_done(reply[0], digest, reply[1], before, spent_epsilon(self.ledger))
        return reply

    def handle(self, study_id: str, payload: bytes) -> tuple[str, bytes]:
        framed = read_message(payload)  # the header is parsed once, here (the executor reuses it)
        header = framed.header
        task_id = str(header.get("task_id", ""))
        try:
            entry = self.study(study_id)
        except FedcareError as exc:
            entry = _Study(None, "", None, f"cannot prepare study: {exc}")  # type: ignore[arg-type]
            self._tell_refused(study_id, "", entry.refusal or "")
        if entry.executor is not None and not self.approved(entry.config_hash):
            # Revoked since the study was loaded: this task and every later one are refused
            # (the approval sync tells the hub, which drops the site from later rounds).
            entry = _Study(entry.config, entry.config_hash, None,
                           self._not_approved(entry.config.study.name, entry.config_hash))
        refusal = (entry.refusal if entry.executor is None
                   else self.site_policy.recheck(study_id, self.ledger))
        if entry.executor is None or refusal is not None:
            log.warning("refusing task %s: %s", task_id, refusal)
            reply = encode_error(ErrorReply(task_id, self.site, int(header.get("round", -1)),
                                            "Refused", refusal or "refused"))
            return task_id, reply
        return task_id, entry.executor.handle(framed)

    def run(self, max_seconds: float | None = None) -> None:
        """Serve until :attr:`stop_event` is set (or ``max_seconds`` pass)."""
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        failures = 0
        greeted = False
        #: A reply computed but not yet accepted by the hub: sent again after a connection
        #: failure instead of being dropped (which would cost the site its round, or a
        #: retraining when the hub re-delivers the task).
        pending: tuple[str, bytes] | None = None
        self.sync.start()
        while not self.stop_event.is_set():
            if deadline is not None and time.monotonic() > deadline:
                return
            try:
                if not greeted:
                    self.hello()
                    greeted = True
                    log.info("site %s connected to %s", self.site, self.kit.hub_url)
                if pending is not None:
                    self.send(*pending)
                    pending = None
                got = self.poll()
                failures = 0
                if got is None:
                    continue
                pending = self.answer(*got)
                self.send(*pending)
                pending = None
            except FedcareError as exc:  # the hub refused something: say so, keep serving
                if pending is not None:  # a refused reply is neither sent nor reused again
                    pending = self._last = None
                failures += 1
                log.error("%s", exc)
                self.stop_event.wait(min(30.0, 1.0 * failures))
            except (LinkError, TransportError, _HubUnavailable) as exc:
                failures += 1
                greeted = greeted and not (isinstance(exc, LinkError) and exc.connect)
                delay = min(30.0, 0.5 * 2 ** min(failures, 6)) * (0.5 + random.random() / 2)
                log.warning("hub unreachable (%s); retrying in %.1f s", exc, delay)
                self.stop_event.wait(delay)

    def close(self) -> None:
        self.sync.stop()
        self.http.close()
        self.audit.flush()


class _HubUnavailable(Exception):
    pass


def _raise_for(r: HubResponse) -> None:
    if r.status_code >= 500:
        raise _HubUnavailable(f"hub answered {r.status_code}")
    if r.status_code >= 400:
        detail: Any = r.text
        with contextlib.suppress(ValueError):
            detail = r.json().get("detail", detail)
        raise FedcareError(f"hub refused the request ({r.status_code}): {detail}")


def _file_digest(path: Path) -> str | None:
    """SHA-256 of a dataset file (None if it cannot be read: the row count says why). Which
    version of its data a site trained on, for the model registry; reveals nothing of the
    rows themselves."""
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError:
        return None


def _count_rows(path: Path) -> int:
    """Row count only: the one fact about the data a node tells the hub unprompted."""
    try:
        if path.suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(path).metadata.num_rows)
        with open(path, "rb") as fh:
            return max(sum(1 for _ in fh) - 1, 0)
    except OSError:
        return 0
