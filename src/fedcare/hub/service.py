"""The hub service: studies, rounds and the node protocol, behind the HTTP API.

Each running study is driven by the same :class:`RoundEngine` as simulation, in its own
thread, over :class:`HubTransport`. All state lives in the database and the blob store, so the
hub can be killed at any moment and, when restarted, every running study continues from its
last completed round.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fedcare.config import (
    FederatedData,
    StudyConfig,
    content_hash,
    contract_matches,
    parse_config,
    secure_round_problems,
)
from fedcare.core.errors import ConfigError, FedcareError, ProtocolError, ValidationError
from fedcare.core.files import atomic_write
from fedcare.core.messages import TaskKind, TrainConfig
from fedcare.core.params import Parameters, ParamSpec
from fedcare.core.wire import (
    Reply,
    ValidatedReply,
    decode_reply,
    peek_header,
)
from fedcare.data.prepare import Columns
from fedcare.engine.dp_check import check_dp_study
from fedcare.engine.executor import (
    NORMALIZER,
    STATS,
    baseline_note,
    stats_expected_aux,
    stats_spec,
)
from fedcare.engine.history import History, RoundRecord, save_history, set_timing, timestamp
from fedcare.engine.integrity import example_bound
from fedcare.engine.learner_factory import ModelShape, make_learner
from fedcare.engine.round_engine import RoundEngine
from fedcare.engine.secure import PROTOCOL_AUX
from fedcare.engine.study import HubPlan, resume_latest
from fedcare.hub.checkpoints import BlobCheckpoints
from fedcare.hub.store import (
    BlobStore,
    Database,
    DatasetInfo,
    EventRepo,
    InvalidTransition,
    ReplyRepo,
    Site,
    SiteRepo,
    StudyNotFound,
    StudyRepo,
    StudyStatus,
    TaskRepo,
    UnknownTask,
    WrongSite,
)
from fedcare.hub.store.database import prepare_data_dir, writable_database
from fedcare.hub.store.faults import storage_problem
from fedcare.hub.transport import HubTransport
from fedcare.learners.metrics import primary_metric_meta
from fedcare.strategies import build_strategy

log = logging.getLogger("fedcare.hub")

#: A round waits this long for sites when the study sets no ``run.round_timeout``.
DEFAULT_ROUND_TIMEOUT = 600.0
#: Largest reply a node may post (bytes); configurable per hub.
DEFAULT_MAX_BODY = 2 * 1024**3
#: A task handed out this long ago and still unanswered is handed out again when its site
#: polls. A node works on one task at a time and polls only when idle, so such a task was
#: lost on the way: the hub was killed after recording the delivery but before (or while)
#: answering, the answer went to a dead long-poll, or the node died while working on it.
#: Without this the task stayed "delivered" forever, and after a hub restart every round
#: in progress timed out for every site that had it (and the study failed).
REDELIVER_AFTER = timedelta(seconds=5)
#: Recording a study's end is retried while the database cannot be written: first and
#: longest wait (s).
SETTLE_RETRY = (0.5, 30.0)
#: A failed study's hub checks that its state folder takes a write of this size (bytes).
STORAGE_PROBE_BYTES = 64 * 1024
#: Long-polls one site may hold open at once. A node keeps one; a second covers a node that
#: restarted while the hub still holds its previous, abandoned poll. More are refused (429):
#: they can only come from a misbehaving or hostile client, and each open poll costs the hub
#: a coroutine and a socket (before the long-poll waited asynchronously, each held one of the
#: worker threads every other request needs, and one site could stall the whole hub).
MAX_POLLS_PER_SITE = 2
#: A site is online (``fedcare sites``) while its node long-polls, or polled this recently
#: (seconds): a running node polls again as soon as a poll ends.
ONLINE_WITHIN = 60.0
#: A long-poll waiting for a task looks at the site's offered tasks again at least this often
#: (a delivered task whose lease ran out is handed out again, see REDELIVER_AFTER).
RECHECK_EVERY = 1.0


class NotFound(FedcareError):
    pass


class Forbidden(FedcareError):
    pass


class NotResumable(FedcareError):
    """A resume asked for a study that is not paused (nor failed on a storage failure)."""


class StorageUnavailable(FedcareError):
    """The hub cannot write its state folder or database right now (disk full, read-only)."""


class TooManyPolls(FedcareError):
    """A site already holds :data:`MAX_POLLS_PER_SITE` long-polls (answered 429)."""


class RevocationCheck(Protocol):
    """Tells whether a site certificate (by serial, hex as the site table stores it) has been
    revoked. A required argument of :class:`HubService`, so no embedding can end up with a
    hub that never checks revocation; the server passes the federation's CRL
    (:class:`fedcare.hub.api.PeerTrust`)."""

    def is_revoked(self, serial_hex: str) -> bool: ...


class NeverRevoked:
    """A :class:`RevocationCheck` for tests and tools without a federation CRL: nothing is
    revoked. Only ever passed explicitly."""

    def is_revoked(self, serial_hex: str) -> bool:
        return False


class _SiteWaiters:
    """The long-polls of one site waiting on the event loop, woken from any thread.

    An engine thread that offers a task calls :meth:`wake`, which schedules ``Event.set`` on
    each waiter's own loop with ``call_soon_threadsafe``: a waiting long-poll holds no thread.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def wake(self) -> None:
        with self.lock:
            waiting = list(self.events)
        for loop, event in waiting:
            with contextlib.suppress(RuntimeError):  # its loop is closed: nobody is waiting
                loop.call_soon_threadsafe(event.set)


@dataclass(frozen=True)
class Offer:
    """A task a running engine offers its site: the message as its two parts (``head`` is
    the task's own framing and header, ``body`` the arrays every site's task of the exchange
    shares - one object, not one copy per site) and the digest it travels with."""

    site: str
    study_id: str
    head: bytes
    body: bytes
    digest: str

    @property
    def size(self) -> int:
        return len(self.head) + len(self.body)


class HubService:
    """The hub's state and protocol.

    Args:
        data_dir: the state folder (database unless ``db_url``, blobs, study outputs); made
            owner-only, and refused with a :class:`HubStateError` when it cannot be written.
        revocation: whether a site certificate is revoked (required: see
            :class:`RevocationCheck`).
    """

    def __init__(self, data_dir: Path, *, revocation: RevocationCheck,
                 db_url: str | None = None,
                 max_body: int = DEFAULT_MAX_BODY, keep_replies: bool = False) -> None:
        self.data_dir = prepare_data_dir(data_dir)
        self.db = Database(db_url) if db_url else Database.for_data_dir(self.data_dir)
        with writable_database(self.db):
            self.db.migrate()
        self.blobs = BlobStore(self.data_dir / "blobs")
        self.max_body = max_body
        #: Write every site's reply to the blob store and keep it. Off by default: a reply
        #: is held in memory only, until its round is aggregated. A site's individual update
        #: is the most sensitive thing the hub handles, a study resumes from its checkpoints
        #: (never from the replies of a completed round), and writing them cost ~15 % of the
        #: hub's CPU in the network benchmark (4 MB per site per round for a 1 M-parameter
        #: model). A hub killed mid-round asks the round's sites again and each node sends
        #: the reply it already computed (NodeAgent). The trade-off: a site whose node also
        #: died before it could resend misses that round (left out at the deadline, like any
        #: silent site), where a stored reply would have counted. The reply rows are the
        #: record either way.
        self.keep_replies = keep_replies
        self.waiters: dict[str, Future[Reply]] = {}
        self.waiters_lock = threading.Lock()
        #: Each site's waiting long-polls (see :meth:`next_task`).
        self._wake: dict[str, _SiteWaiters] = {}
        self._wake_lock = threading.Lock()
        #: Long-polls open per site, at most MAX_POLLS_PER_SITE (under _wake_lock).
        self._polls: dict[str, int] = {}
        #: When each site's last long-poll ended (under _wake_lock): `fedcare sites`.
        self._last_poll: dict[str, dt.datetime] = {}
        self._runners: dict[str, threading.Thread] = {}
        self._specs: dict[str, tuple[ParamSpec, dict[str, ParamSpec | None]]] = {}
        self._stopping = threading.Event()
        self._serials: dict[str, str] = {}
        self._tasks: dict[str, tuple[str, TaskKind, str]] = {}
        #: Tasks this process's engines offer, by site then task id (see :meth:`offer`).
        self._offers: dict[str, dict[str, Offer]] = {}
        self._offers_lock = threading.Lock()
        self._revocation = revocation

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Resume every study that was running when the hub last stopped. A paused study
        waits for a researcher's ``fedcare study resume`` (its storage may still be full)."""
        with writable_database(self.db):
            with self.db.session() as s:
                running = [st.id for st in StudyRepo(s).list(status=StudyStatus.RUNNING)]
                paused = [(st.id, st.error)
                          for st in StudyRepo(s).list(status=StudyStatus.PAUSED)]
            for study_id in running:
                self.event("resume", f"resuming study {study_id}", study_id=study_id)
        for study_id, why in paused:
            log.warning("study %s is paused (%s); continue it with `fedcare study resume %s`",
                        study_id, why, study_id)
        for study_id in running:
            self._launch(study_id)

    def stop(self) -> None:
        """Stop: wake every waiting long-poll (it answers "no task"), let studies resume on
        the next start."""
        self._stopping.set()
        with self._wake_lock:
            sites = list(self._wake.values())
        for waiters in sites:
            waiters.wake()

    def is_revoked(self, serial_hex: str) -> bool:
        """Whether the certificate with this serial is revoked (see :class:`RevocationCheck`)."""
        return self._revocation.is_revoked(serial_hex)

    def event(self, kind: str, message: str, *, study_id: str | None = None,
              site: str | None = None) -> None:
        log.info("%s: %s", kind, message)
        with self.db.session() as s:
            EventRepo(s).log(kind, message, study_id=study_id, site=site)

    # -- researcher side ------------------------------------------------------------------
    def submit_study(self, raw: Mapping[str, Any], force: bool = False) -> dict[str, Any]:
        cfg = parse_config(raw)
        if not isinstance(cfg.data, FederatedData):
            raise ConfigError("a networked study needs data.source = 'federation' (the nodes "
                              "map data.dataset to their own files)")
        with self.db.session() as s:
            listed = SiteRepo(s).list()  # read once for the three checks below
        sites = self._participants(cfg, listed)
        check_dp_study(cfg, len(sites), force=force)  # a DP study that cannot learn: 422
        self._check_contracts(cfg, sites, listed)
        if len(sites) < cfg.strategy.min_sites:
            raise ConfigError(f"only {len(sites)} site(s) hold dataset {cfg.data.dataset!r} "
                              f"({sites}); the strategy needs {cfg.strategy.min_sites}")
        problems = secure_round_problems(cfg, len(sites))
        if problems:
            raise ConfigError(problems)
        with self.db.session() as s:
            study = StudyRepo(s).create(cfg.study.name, cfg.model_dump(mode="json"),
                                        content_hash(cfg), sites, cfg.study.rounds)
            study_id = study.id
            StudyRepo(s).set_status(study_id, StudyStatus.RUNNING)
        self.event("study", f"study {cfg.study.name!r} submitted with sites {sites}",
                   study_id=study_id)
        self._flag_data(cfg.data.dataset, study_id, listed)
        self._launch(study_id)
        return {"study_id": study_id, "config_hash": content_hash(cfg), "sites": sites}

    def _check_contracts(self, cfg: StudyConfig, sites: list[str],
                         listed: list[Site]) -> None:
        """Refuse a study whose sites built its dataset with different data contracts (or
        another contract than the study names): they would not be training on the same
        problem. Sites without a contract (plain tables) are not affected."""
        assert isinstance(cfg.data, FederatedData)
        hashes: dict[str, str] = {
            site.name: str(d["contract_hash"]) for site in listed
            if site.name in sites for d in site.datasets or []
            if d.get("name") == cfg.data.dataset and d.get("contract_hash")}
        wanted = cfg.data.contract_hash
        if wanted is not None:
            wrong = sorted(n for n, h in hashes.items() if not contract_matches(wanted, h))
            named = sorted({h for h in hashes.values() if contract_matches(wanted, h)})
            if len(named) > 1:
                raise ConfigError(f"data.contract_hash {wanted!r} is a prefix of {len(named)} "
                                  f"different data contracts among the sites ("
                                  f"{', '.join(h[:16] + '...' for h in named)}); give the "
                                  "full 64-digit hash `fedcare data check` prints")
            if wrong:
                raise ConfigError(f"sites {wrong} built dataset {cfg.data.dataset!r} with "
                                  "another data contract than data.contract_hash; they must "
                                  "re-check their data against the study's contract")
        elif len(set(hashes.values())) > 1:
            raise ConfigError(f"the sites built dataset {cfg.data.dataset!r} with different "
                              "data contracts; name one with data.contract_hash")

    def _flag_data(self, dataset: str, study_id: str, listed: list[Site]) -> None:
        """Before training starts: log what the sites' quality reports say about the data
        (shift, likely label-definition mismatch, refusals) in the study's event log."""
        try:
            q = self.dataset_quality(dataset, listed)
        except NotFound:
            return
        for site, why in q["refusing"].items():
            self.event("data", f"site {site} will refuse to train on {dataset!r}: {why}",
                       study_id=study_id, site=site)
        for f in (q["comparison"] or {}).get("findings", []):
            self.event("data", f"{f['kind']}: {f['message']}", study_id=study_id,
                       site=f.get("site"))

    def _participants(self, cfg: StudyConfig, listed: list[Site]) -> list[str]:
        assert isinstance(cfg.data, FederatedData)
        revoked = {site.name for site in listed if self.is_revoked(site.cert_serial)}
        known = {site.name: [d["name"] for d in site.datasets or []]
                 for site in listed if site.name not in revoked}
        if cfg.data.sites:
            gone = sorted(revoked & set(cfg.data.sites))
            if gone:
                raise ConfigError(f"sites {gone} have been revoked (their certificates are on "
                                  "the federation's revocation list); remove them from "
                                  "data.sites")
            missing = [x for x in cfg.data.sites if cfg.data.dataset not in known.get(x, [])]
            if missing:
                raise ConfigError(f"sites {missing} are unknown to the hub or do not hold "
                                  f"dataset {cfg.data.dataset!r}; start their nodes first")
            return list(cfg.data.sites)
        return sorted(n for n, ds in known.items() if cfg.data.dataset in ds)

    def study_status(self, study_id: str, last_rounds: int | None = None) -> dict[str, Any]:
        """The study's state and its rounds' records (``last_rounds``: only the last that
        many; a progress display needs one, and all of them grow with the study)."""
        with self.db.session() as s:
            study = StudyRepo(s).get(study_id)
            if study is None:
                raise NotFound(f"no study {study_id!r}")
            rounds = [r.record for r in StudyRepo(s).rounds(study_id, last_rounds) if r.record]
            raw = study.config or {}
            primary = primary_metric_meta(str(raw.get("data", {}).get("task", "binary")),
                                          raw.get("study", {}).get("primary_metric"))
            return {"study_id": study.id, "name": study.name, "status": study.status.value,
                    "created": timestamp(study.created_at), **primary,
                    "rounds_planned": study.rounds_planned, "current_round": study.current_round,
                    "sites": study.sites, "config_hash": study.config_hash,
                    "error": study.error, "rounds": rounds}

    def list_studies(self) -> list[dict[str, Any]]:
        with self.db.session() as s:
            return [{"study_id": st.id, "name": st.name, "status": st.status.value,
                     "current_round": st.current_round, "rounds_planned": st.rounds_planned,
                     "created": timestamp(st.created_at)}
                    for st in StudyRepo(s).list()]

    def study_events(self, study_id: str, limit: int = 200) -> list[dict[str, Any]]:
        with self.db.session() as s:
            return [{"at": e.at.isoformat(), "kind": e.kind, "site": e.site,
                     "message": e.message}
                    for e in reversed(EventRepo(s).recent(limit, study_id=study_id))]

    def artifact(self, study_id: str, name: str) -> Path:
        if name not in ("history.json", "model.safetensors", "report.html", "model.xgb.json"):
            raise NotFound(f"no artifact {name!r}; try history.json, model.safetensors, "
                           "report.html or (xgboost studies) model.xgb.json")
        path = self.data_dir / "studies" / study_id / name
        if not path.is_file():
            raise NotFound(f"study {study_id} has no {name} yet (is it finished?)")
        return path

    def dataset_quality(self, name: str, listed: list[Site] | None = None) -> dict[str, Any]:
        """Every site's quality report for dataset ``name`` and the hub's comparison of them
        (distribution shift, label-rate outliers, code coverage, units, contract mismatch):
        checked before anyone trains on the data. ``listed``: the site table, when the
        caller has just read it."""
        if listed is None:
            with self.db.session() as s:
                listed = SiteRepo(s).list()
        reports = {site.name: d["quality"] for site in listed for d in site.datasets or []
                   if d.get("name") == name and isinstance(d.get("quality"), dict)}
        if not reports:
            raise NotFound(f"no site reported a quality check for dataset {name!r} (clinical "
                           "datasets with a contract report one when their node starts)")
        usable = {k: v for k, v in reports.items() if "error" not in v}
        comparison = None
        if len(usable) >= 2:
            from fedcare.analytics.shift import compare_reports

            try:
                comparison = compare_reports(usable).to_dict()
            except Exception as exc:  # noqa: BLE001 (reports are node-supplied JSON: a malformed one must not make this endpoint, or a study submission, fail)
                comparison = {"error": f"the sites' reports could not be compared: {exc!r}",
                              "findings": []}
        return {"dataset": name, "reports": reports, "comparison": comparison,
                "refusing": {k: v.get("violations") or v.get("error")
                             for k, v in reports.items()
                             if v.get("violations") or v.get("error")}}

    def sites(self) -> list[dict[str, Any]]:
        """The sites the hub knows, each ``online`` when its node polled within
        :data:`ONLINE_WITHIN` seconds (a node long-polls continuously while it runs)."""
        now = dt.datetime.now(dt.UTC)
        with self._wake_lock:
            polling = {site for site, n in self._polls.items() if n}
            polled = dict(self._last_poll)
        out = []
        with self.db.session() as s:
            for x in SiteRepo(s).list():
                seen = now if x.name in polling else max(x.last_seen,
                                                         polled.get(x.name, x.last_seen))
                out.append({"name": x.name, "last_seen": timestamp(seen),
                            "online": (now - seen).total_seconds() <= ONLINE_WITHIN,
                            "version": x.version, "datasets": x.datasets})
        return out

    # -- node side ------------------------------------------------------------------------
    def hello(self, site: str, serial: str, version: str, datasets: list[dict[str, Any]],
              session: str) -> None:
        infos = [DatasetInfo(str(d["name"]), int(d["rows"]), d.get("contract_hash"),
                             d.get("quality")) for d in datasets]
        with self.db.session() as s:
            SiteRepo(s).upsert_seen(site, serial, version, infos)
        self._serials[site] = serial.lower()
        self.event("node", f"site {site} connected (version {version}, session {session[:8]})",
                   site=site)

    async def next_task(self, site: str, wait: float) -> tuple[str, Offer] | None:
        """Long-poll: the site's oldest pending task (id and offer), or None after ``wait``
        seconds. Only tasks a running engine of this process offers are handed out, so a
        site that has nothing offered costs no database query while it waits.

        Waits on the event loop, holding no thread: an engine thread's :meth:`offer` wakes
        it (thread-safely). A site may hold :data:`MAX_POLLS_PER_SITE` of these at once;
        one more raises :class:`TooManyPolls`. Run it on the server's event loop.
        """
        deadline = time.monotonic() + max(0.0, min(wait, 60.0))
        with self._poll_slot(site):
            loop = asyncio.get_running_loop()
            waiters = self._waiters(site)
            woken = asyncio.Event()
            with waiters.lock:
                waiters.events.add((loop, woken))
            try:
                while not self._stopping.is_set():
                    # Cleared before looking: an offer made from now on sets it again, and
                    # the wait below returns at once (no offer slips between look and wait).
                    woken.clear()
                    found = await self._deliver_async(site)
                    if found is not None:
                        return found
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._stopping.is_set():
                        return None
                    # Woken by a new offer; else every RECHECK_EVERY s, for a delivered task
                    # whose lease ran out (handed out again, see REDELIVER_AFTER).
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(woken.wait(), min(remaining, RECHECK_EVERY))
                return None
            finally:
                with waiters.lock:
                    waiters.events.discard((loop, woken))

    @contextlib.contextmanager
    def _poll_slot(self, site: str) -> Iterator[None]:
        """One of the site's :data:`MAX_POLLS_PER_SITE` long-poll slots, or
        :class:`TooManyPolls`. Only the event loop's thread counts, so no lock."""
        with self._wake_lock:
            if self._polls.get(site, 0) >= MAX_POLLS_PER_SITE:
                raise TooManyPolls(f"site {site} already holds {MAX_POLLS_PER_SITE} "
                                   "long-polls (GET /v1/node/task); a node needs one: wait "
                                   "for an answer before polling again")
            self._polls[site] = self._polls.get(site, 0) + 1
        try:
            yield
        finally:
            with self._wake_lock:
                self._last_poll[site] = dt.datetime.now(dt.UTC)
                self._polls[site] -= 1
                if not self._polls[site]:
                    del self._polls[site]

    async def _deliver_async(self, site: str) -> tuple[str, Offer] | None:
        """:meth:`_deliver` off the event loop (it queries the database), and not at all
        when nothing is offered to the site."""
        with self._offers_lock:
            if not self._offers.get(site):
                return None
        return await asyncio.to_thread(self._deliver, site)

    def _deliver(self, site: str) -> tuple[str, Offer] | None:
        with self._offers_lock:
            offered = list(self._offers.get(site, ()))
        if not offered:
            return None
        with self.db.session() as s:
            task = TaskRepo(s).next_pending_for(site, redeliver_after=REDELIVER_AFTER,
                                                among=offered)
            task_id = task.id if task is not None else None
        if task_id is None:
            return None
        with self._offers_lock:
            offer = self._offers.get(site, {}).get(task_id)
        # Withdrawn in the meantime (answered through a re-delivery, or its round ended):
        # the site is told nothing now and asks again.
        return None if offer is None else (task_id, offer)

    def offer(self, task_id: str, offer: Offer) -> None:
        """Make a stored task available to its site's long-poll.

        Task payloads are kept in memory only, never written to disk: a hub restarted
        mid-round replays the round from its last checkpoint, and its engine offers the same
        tasks again (same ids, rebuilt from the same model). Until then a task row left by
        the previous process is not handed out. Storing them cost a write, a sha256 and two
        fsyncs of each site's copy of the model per round, on the round's critical path."""
        with self._offers_lock:
            self._offers.setdefault(offer.site, {})[task_id] = offer
        self.notify_site(offer.site)

    def withdraw(self, task_ids: Callable[[str], bool]) -> None:
        """Stop offering the tasks whose id ``task_ids`` accepts (answered, or their round
        or study is over), releasing their payloads."""
        with self._offers_lock:
            for site in list(self._offers):
                offers = self._offers[site]
                for tid in [t for t in offers if task_ids(t)]:
                    del offers[tid]
                if not offers:
                    del self._offers[site]

    def note_task(self, task_id: str, site: str, kind: TaskKind, study_id: str) -> None:
        """Remember who a task was created for (replies are checked against it; a hub that
        restarted reads it back from the database)."""
        self._tasks[task_id] = (site, kind, study_id)

    def forget_tasks(self, prefix: str) -> None:
        for tid in list(self._tasks):  # a snapshot: other threads add tasks meanwhile
            if tid.startswith(prefix):
                self._tasks.pop(tid, None)

    def _task_info(self, task_id: str) -> tuple[str | None, TaskKind | None, str]:
        known = self._tasks.get(task_id)
        if known is not None:
            return known
        with self.db.session() as s:
            task = TaskRepo(s).get(task_id)
            return (None, None, "") if task is None else (task.site, task.kind, task.study_id)

    def site_serial(self, site: str) -> str | None:
        """The certificate serial a site last connected with (cached: asked once per task)."""
        serial = self._serials.get(site)
        if serial is None:
            with self.db.session() as s:
                known = SiteRepo(s).get(site)
                serial = None if known is None else known.cert_serial
            if serial is not None:
                self._serials[site] = serial
        return serial

    def _waiters(self, site: str) -> _SiteWaiters:
        with self._wake_lock:
            return self._wake.setdefault(site, _SiteWaiters())

    def notify_site(self, site: str) -> None:
        """Wake only the long-polls of ``site`` (a new task for one site wakes no other);
        safe from any thread."""
        self._waiters(site).wake()

    def study_for_node(self, site: str, study_id: str) -> dict[str, Any]:
        with self.db.session() as s:
            study = StudyRepo(s).get(study_id)
            if study is None or site not in (study.sites or []):
                raise NotFound(f"no study {study_id!r} for site {site}")
            return {"study_id": study.id, "config": study.config,
                    "config_hash": study.config_hash, "sites": study.sites}

    def receive_reply(self, site: str, task_id: str, body: bytes, sha: str | None) -> None:
        """Validate and record a node's reply, then wake the round that waits for it.

        Rejected (and logged) before anything is stored: a body whose sha256 does not match,
        a malformed message, an update with the wrong layout or NaN/Inf, a reply to a task this
        site never received, a duplicate, a late reply.
        """
        try:
            digest = hashlib.sha256(body).hexdigest()
            if sha is None or digest != sha.lower():
                raise ValidationError("body does not match its X-Content-SHA256 header")
            header = peek_header(body)
            if header.get("task_id") != task_id:
                raise ValidationError("reply names another task than the one it is posted to")
            owner, kind, study_id = self._task_info(task_id)
            # Refused here, before the body goes into the blob store (ReplyRepo.record would
            # refuse them too, but only after the store): otherwise a site could park any
            # bytes on the hub's disk by posting them to task ids that are not its own.
            if owner is None or kind is None:
                raise UnknownTask(f"no task {task_id!r}", site=site)
            if owner != site:
                raise WrongSite(f"task {task_id} was not sent to this site", site=site)
            spec, aux = self._expected(study_id, kind)
            decoded = decode_reply(body, spec, aux, site=site)  # full validation
            if self.keep_replies and not kind.is_protocol_step:
                # (A protocol step's reply is never reused: a restarted hub runs the round's
                # protocol again with fresh keys. So masked inputs, share ciphertexts and
                # decrypted sums are never written, whatever the hub keeps.)
                # Not fsynced (about 15 ms of disk wait per 4 MB reply, on the round's
                # critical path): a hub killed with kill -9 keeps it all the same, and a power
                # cut that loses it is found out on reading it back, when the site is asked
                # again (HubTransport._reuse). The round's checkpoint is fsynced.
                self.blobs.put_hashed(body, digest, durable=False)
            with self.db.session() as s:
                ReplyRepo(s).record(task_id, site, digest, len(body),
                                    is_error=header.get("type") == "error",
                                    message=header.get("message") if header.get(
                                        "type") == "error" else None)
        except (ValidationError, ProtocolError) as exc:
            self.rejected(site, task_id, exc.message)
            raise
        with self._offers_lock:  # answered: no longer offered
            self._offers.get(site, {}).pop(task_id, None)
        with self.waiters_lock:
            fut = self.waiters.pop(task_id, None)
        if fut is not None and not fut.done():
            fut.set_result(ValidatedReply(body, decoded))

    def rejected(self, site: str, task_id: str, reason: str) -> None:
        """Log a refused reply in its study's event log (``fedcare study logs``)."""
        self.event("rejected", f"reply to {task_id} from {site} rejected: {reason}",
                   site=site, study_id=_study_of(task_id))

    def _expected(self, study_id: str, kind: TaskKind
                  ) -> tuple[ParamSpec, dict[str, ParamSpec | None]]:
        if kind in (TaskKind.EVALUATE, TaskKind.LOCAL_BASELINE):  # metrics only, no model
            return ParamSpec({}), {}
        if kind.is_protocol_step:
            return ParamSpec({}), {PROTOCOL_AUX: None}
        if kind is TaskKind.STATS:
            cfg = self._config(study_id)
            assert isinstance(cfg.data, FederatedData)
            columns = Columns.of(cfg.data, cfg.data.features)
            secure = cfg.secure_aggregation.protocol != "none"
            if columns.active:
                return ParamSpec({}), stats_expected_aux(columns, secure=secure)
            if secure:  # statistics go into a secure sum
                return ParamSpec({}), {PROTOCOL_AUX: None}
            return ParamSpec({}), {STATS: stats_spec(len(cfg.data.features))}
        if study_id not in self._specs:
            cfg = self._config(study_id)
            if cfg.secure_aggregation.protocol != "none":
                # A secure fit reply carries protocol messages (validated by the protocol
                # when the round engine parses them), never the model.
                self._specs[study_id] = (ParamSpec({}), {PROTOCOL_AUX: None})
            else:
                learner = make_learner(cfg, ModelShape.of_federated(cfg.data))  # type: ignore[arg-type]
                spec = learner.initial_parameters().spec
                strategy = build_strategy(cfg.strategy, num_sites=1)
                self._specs[study_id] = (spec, dict(strategy.expected_aux(spec)))
        return self._specs[study_id]

    def _config(self, study_id: str) -> StudyConfig:
        with self.db.session() as s:
            study = StudyRepo(s).get(study_id)
            if study is None:
                raise NotFound(f"no study {study_id!r}")
            return parse_config(study.config)

    # -- running studies ------------------------------------------------------------------
    def _launch(self, study_id: str) -> None:
        thread = threading.Thread(target=self._run_study, args=(study_id,), daemon=True,
                                  name=f"study-{study_id}")
        self._runners[study_id] = thread
        thread.start()

    def wait_for(self, study_id: str, timeout: float | None = None) -> None:
        thread = self._runners.get(study_id)
        if thread is not None:
            thread.join(timeout)

    def _run_study(self, study_id: str) -> None:
        """Run a study's engine to its end, in this (the study's own) thread.

        However the engine stops, the study leaves this thread completed, failed, or paused
        when the hub could not write its storage (see :func:`storage_problem`): never still
        ``running`` with no thread to run it, which is what a database error while recording
        a failure used to leave (the thread died, the study waited for a hub restart).
        """
        transport = HubTransport(self, study_id)
        try:
            engine, start = self._engine(study_id, transport)
            rounds = engine.history.meta["rounds_planned"]
            self._normalizer(engine)
            final = engine.run(rounds, start_round=start)
            self._record_final_metrics(study_id, engine.history)
            self._local_baselines(study_id, engine)
            self._write_outputs(study_id, engine.history, final)
            outcome: tuple[StudyStatus, str | None] = (StudyStatus.COMPLETED, None)
        except Exception as exc:  # noqa: BLE001 (classified below; a bug is logged with its traceback)
            try:
                outcome = self._outcome(study_id, exc)
            except Exception:  # classifying must not be what leaves the study runner-less
                log.exception("study %s: cannot classify its failure", study_id)
                outcome = (StudyStatus.FAILED, f"internal error: {exc!r}")
        finally:
            try:
                transport.close()  # stop offering its tasks before anything else
            except Exception:  # the study's end must be recorded all the same
                log.exception("study %s: closing its transport failed", study_id)
        self._settle(study_id, *outcome)

    def _outcome(self, study_id: str, exc: Exception) -> tuple[StudyStatus, str]:
        """How a study the engine gave up on ends: paused on a storage failure, else failed."""
        problem = storage_problem(exc)
        if problem is None and isinstance(exc, FedcareError):
            # A round that failed for want of replies may have failed because the hub could
            # not record them (the API answered the nodes 503): the engine only sees the
            # silence. The failure of the storage is what to report then.
            problem = self._storage_probe()
            if problem is None:
                return StudyStatus.FAILED, str(exc)
            return StudyStatus.PAUSED, _paused(study_id, problem, after=str(exc))
        if problem is None:
            log.exception("study %s crashed", study_id, exc_info=exc)
            return StudyStatus.FAILED, f"internal error: {exc!r}"
        return StudyStatus.PAUSED, _paused(study_id, problem)

    def _storage_probe(self) -> str | None:
        """Whether the hub's state folder takes a small durable write right now (None) or
        what is wrong with it. Asked only when a study fails (never on the round's path)."""
        probe = self.data_dir / f".write-probe-{threading.get_ident()}"
        try:
            try:
                with open(probe, "wb") as fh:
                    fh.write(b"\0" * STORAGE_PROBE_BYTES)
                    fh.flush()
                    os.fsync(fh.fileno())
            finally:
                probe.unlink(missing_ok=True)
        except OSError as exc:
            return storage_problem(exc)
        return None

    def _fail(self, study_id: str, message: str) -> None:
        self._settle(study_id, StudyStatus.FAILED, message)

    def _settle(self, study_id: str, status: StudyStatus, message: str | None) -> None:
        """Record how a study's run ended: its status, error and event in one transaction.

        Retried (with backoff) until the database takes it: meanwhile this thread is still
        the study's runner, so the study is never ``running`` without one. A failure that
        cannot be recorded because the storage fails is recorded as a pause instead (the
        storage is the likelier cause, and a genuine failure shows again on resuming). A hub
        shutting down records no failure or pause: the study is still running in the
        database and resumes when the hub starts again.
        """
        delay, most = SETTLE_RETRY
        while True:
            if self._stopping.is_set() and status is not StudyStatus.COMPLETED:
                return
            text = f"study {study_id} {status.value}" + (f": {message}" if message else "")
            try:
                with self.db.session() as s:
                    StudyRepo(s).set_status(study_id, status, error=message)
                    EventRepo(s).log("study", text, study_id=study_id)
            except (InvalidTransition, StudyNotFound) as exc:  # cancelled meanwhile, say
                log.error("study %s: cannot record it %s: %s", study_id, status.value, exc)
                return
            except Exception as exc:  # noqa: BLE001 (retried: the state must reach the database)
                problem = storage_problem(exc)
                if problem is not None and status is StudyStatus.FAILED:
                    status, message = StudyStatus.PAUSED, _paused(study_id, problem,
                                                                  after=message)
                log.warning("study %s: cannot record it %s (%s); trying again in %.1f s",
                            study_id, status.value, problem or repr(exc), delay)
                if self._stopping.wait(delay):
                    return
                delay = min(most, delay * 2)
                continue
            (log.warning if status is StudyStatus.PAUSED else log.info)("%s", text)
            return

    def resume_study(self, study_id: str) -> dict[str, Any]:
        """Continue a paused study, or one that failed on a storage failure, after its last
        completed round (what a hub restart does for a running study), in a new thread."""
        runner = self._runners.get(study_id)
        if runner is not None and runner.is_alive():
            raise NotResumable(f"study {study_id} is still running on this hub")
        try:
            with self.db.session() as s:
                study = StudyRepo(s).resume(study_id)
                after = study.current_round
                EventRepo(s).log("resume", f"study {study_id} resumed by a researcher after "
                                           f"round {after}", study_id=study_id)
        except StudyNotFound as exc:
            raise NotFound(exc.message) from exc
        except InvalidTransition as exc:
            raise NotResumable(exc.message) from exc
        except Exception as exc:
            problem = storage_problem(exc)
            if problem is None:
                raise
            raise StorageUnavailable(f"the hub still cannot write its storage: {problem}; "
                                     "free space (or fix the disk) and resume again") from exc
        log.info("study %s resumed after round %d", study_id, after)
        self._launch(study_id)
        return {"study_id": study_id, "status": StudyStatus.RUNNING.value,
                "resumed_after_round": after}

    def _engine(self, study_id: str, transport: HubTransport) -> tuple[RoundEngine, int]:
        """The study's engine and the round it starts from (after the last completed one)."""
        with self.db.session() as s:
            study = StudyRepo(s).get(study_id)
            assert study is not None
            sites, created = list(study.sites), study.created_at
            cfg = parse_config(study.config)
        assert isinstance(cfg.data, FederatedData)
        # Fixed when the study starts (and kept in its history for a resume): a site cannot
        # raise its weight's bound by saying hello again with more rows mid-study.
        plan = HubPlan.from_config(cfg, sites, mode="network", study_id=study_id,
                                   created=timestamp(created),  # when it was submitted
                                   example_bounds=self._example_bounds(cfg.data.dataset, sites),
                                   round_timeout=DEFAULT_ROUND_TIMEOUT)
        checkpoints = BlobCheckpoints(self.blobs, self.db, study_id, withdraw=self.withdraw)
        # CKKS: the hub holds no context; the sites make the study's key (fedcare.hub.keyrelay).
        engine = plan.engine(transport, checkpoints=checkpoints,
                             on_round=lambda r: self._on_round(study_id, r),
                             attempts=lambda r: transport.protocol_attempt(r))
        return engine, resume_latest(engine, checkpoints)

    def _example_bounds(self, dataset: str, sites: list[str]) -> dict[str, int]:
        """The most examples each site may claim in a study of ``dataset``: the rows it
        declared in its hello (audit F3: a FedAvg weight was whatever a reply claimed)."""
        with self.db.session() as s:
            listed = {x.name: x.datasets or [] for x in SiteRepo(s).list()}
        out = {}
        for site in sites:
            rows = [d.get("rows") for d in listed.get(site, []) if d.get("name") == dataset]
            declared = max((r for r in rows if isinstance(r, int) and not isinstance(r, bool)),
                           default=0)
            out[site] = example_bound(declared)
        return out

    def _normalizer(self, engine: RoundEngine) -> None:
        """Federation-wide feature scaling: computed once from the sites' sums (round 0 stats
        tasks; through secure aggregation and DP-noised when the study uses them), kept in
        the history so a resumed study reuses exactly the same values."""
        from fedcare.engine.privacy import releases_stats, stats_noise_multiplier

        cfg = parse_config(engine.history.meta["config"])
        if not (isinstance(cfg.data, FederatedData) and releases_stats(cfg)):
            return
        saved = engine.history.meta.get("normalizer")
        if saved is None:
            columns = Columns.of(cfg.data, cfg.data.features)
            numeric = [cfg.data.features[i] for i in columns.numeric]
            bounds = None
            if stats_noise_multiplier(cfg) is not None:
                from fedcare.data.standardize import stats_bounds

                assert cfg.data.stats_clip is not None  # required by the config's checks
                bounds = stats_bounds(cfg.data.stats_clip, numeric)
            norm = engine.feature_statistics(len(numeric), bounds, columns)
            engine.history.meta["normalizer"] = {k: v.tolist() for k, v in norm.items()}
        else:
            # mean/std are float32; fill values and the level bytes stay float64 on resume
            norm = Parameters({k: np.asarray(v, dtype=np.float32 if k in ("mean", "std")
                                             else np.float64) for k, v in saved.items()})
        engine.extra_aux = {NORMALIZER: norm}

    def _local_baselines(self, study_id: str, engine: RoundEngine) -> None:
        """A study with ``[baselines] local_at_sites = true``: after the final evaluation each
        site trains the study's initial model alone and reports its held-out metrics (see
        :meth:`RoundEngine.local_baselines`); the history's ``baselines.local`` then holds
        what simulation's local-only baseline holds. A site that refuses or fails is named in
        the study log and the study completes without its baseline."""
        cfg = parse_config(engine.history.meta["config"])
        if not (cfg.baselines.local_at_sites and isinstance(cfg.data, FederatedData)):
            return
        initial = make_learner(cfg, ModelShape.of_federated(cfg.data)).initial_parameters()
        block = engine.local_baselines(initial, TrainConfig(**cfg.train.model_dump()),
                                       cfg.study.rounds)
        for site, why in block["sites_failed"].items():
            self.event("baseline", f"site {site} trained no local-only baseline: {why}",
                       study_id=study_id, site=site)
        done = sorted(block["site_metrics"])
        self.event("baseline", f"local-only baselines reported by {done}", study_id=study_id)
        engine.history.baselines["local"] = {**block, **baseline_note(cfg.privacy.mode)}

    def _on_round(self, study_id: str, record: RoundRecord) -> None:
        failed = f"; failed: {record.sites_failed}" if record.sites_failed else ""
        self.event("round", f"round {record.round} done with {record.sites_completed}{failed}",
                   study_id=study_id)
        for site, why in record.sites_flagged.items():
            self.event("flagged", f"round {record.round}: site {site}: {why}",
                       study_id=study_id, site=site if site in record.sites_sampled else None)

    def _record_final_metrics(self, study_id: str, history: History) -> None:
        """The last round's record with the final evaluation of its model, as `fedcare study
        status` shows it (each round's row is written before its model is evaluated)."""
        if history.rounds:
            last = history.rounds[-1]
            with self.db.session() as s:
                StudyRepo(s).update_record(study_id, last.round, asdict(last))

    def _write_outputs(self, study_id: str, history: History, final: Parameters) -> None:
        from fedcare.engine.bundle import networked_bundle

        out = self.data_dir / "studies" / study_id
        created = dt.datetime.fromisoformat(history.meta["created"])
        set_timing(history, (dt.datetime.now(dt.UTC) - created).total_seconds())
        bundle = networked_bundle(study_id, history, final)
        atomic_write(out / "model.safetensors", bundle.to_bytes())
        from fedcare.engine.trees import write_tree_outputs

        write_tree_outputs(out, bundle, history.meta)
        save_history(history, out / "history.json")
        from fedcare.reporting import write_report

        write_report(history.to_dict(), out / "report.html")


def _paused(study_id: str, problem: str, *, after: str | None = None) -> str:
    """The reason a paused study shows (``fedcare study status``): what failed, what to do."""
    seen = f" (the study then stopped: {after})" if after else ""
    return (f"the hub cannot write its storage: {problem}{seen}. Free space (or fix the "
            f"disk), then continue from the last completed round with `fedcare study resume "
            f"{study_id}`")


def _study_of(task_id: str) -> str | None:
    """The study id a (site-supplied, unchecked) task id names, for the event log; None when
    it cannot be one. The prefix used to be logged as is: on PostgreSQL one longer than the
    events.study_id column (64) made logging the rejection fail and the API answer 500."""
    study_id = task_id.split("/", 1)[0]
    return study_id if 0 < len(study_id) <= 64 else None
