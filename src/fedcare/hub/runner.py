"""Running studies: each in its own thread, driven by the same :class:`RoundEngine` as
simulation over :class:`HubTransport`. All state lives in the database and the blob store, so
the hub can be killed at any moment and, when restarted, every running study continues from
its last completed round.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from fedcare.config import FederatedData, parse_config
from fedcare.core.errors import FedcareError
from fedcare.core.files import atomic_write
from fedcare.core.messages import TrainConfig
from fedcare.core.params import Parameters
from fedcare.data.prepare import Columns
from fedcare.engine.executor import NORMALIZER, baseline_note
from fedcare.engine.history import History, RoundRecord, save_history, set_timing, timestamp
from fedcare.engine.integrity import example_bound
from fedcare.engine.learner_factory import ModelShape, make_learner
from fedcare.engine.round_engine import RoundEngine
from fedcare.engine.study import HubPlan, resume_latest
from fedcare.hub.checkpoints import BlobCheckpoints
from fedcare.hub.errors import NotFound, NotResumable, StorageUnavailable
from fedcare.hub.mailbox import TaskMailbox
from fedcare.hub.sites import SiteDirectory
from fedcare.hub.state import HubState
from fedcare.hub.store import (
    BlobStore,
    Database,
    EventRepo,
    InvalidTransition,
    SiteRepo,
    StudyNotFound,
    StudyRepo,
    StudyStatus,
)
from fedcare.hub.store.database import writable_database
from fedcare.hub.store.faults import storage_problem
from fedcare.hub.transport import HubTransport

log = logging.getLogger("fedcare.hub")

#: A round waits this long for sites when the study sets no ``run.round_timeout``.
DEFAULT_ROUND_TIMEOUT = 600.0
#: Recording a study's end is retried while the database cannot be written: first and
#: longest wait (s).
SETTLE_RETRY = (0.5, 30.0)
#: A failed study's hub checks that its state folder takes a write of this size (bytes).
STORAGE_PROBE_BYTES = 64 * 1024


class StudyRunner:
    """The threads that run studies: launch, resume, the engine's assembly, checkpoints,
    how a run ends (completed, failed, paused) and its outputs."""

    def __init__(self, state: HubState, mailbox: TaskMailbox, directory: SiteDirectory, *,
                 withdrawn: Callable[[str, str], bool] = lambda study_id, site: False
                 ) -> None:
        self.state = state
        #: Whether a site withdrew from a study (revoked its approval, refused it): it is
        #: then left out like a revoked site (see :mod:`fedcare.hub.approvals`).
        self.withdrawn = withdrawn
        self.mailbox = mailbox
        self.directory = directory
        self._runners: dict[str, threading.Thread] = {}
        self._stopping = threading.Event()

    @property
    def db(self) -> Database:
        return self.state.db

    @property
    def blobs(self) -> BlobStore:
        return self.state.blobs

    @property
    def data_dir(self) -> Path:
        return self.state.data_dir

    def event(self, kind: str, message: str, *, study_id: str | None = None,
              site: str | None = None) -> None:
        self.state.event(kind, message, study_id=study_id, site=site)

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
            self.launch(study_id)

    def stop(self) -> None:
        """The hub is stopping: a study's run that ends now records no failure or pause
        (it is still running in the database and resumes when the hub starts again)."""
        self._stopping.set()

    def launch(self, study_id: str) -> None:
        thread = threading.Thread(target=self._run_study, args=(study_id,), daemon=True,
                                  name=f"study-{study_id}")
        self._runners[study_id] = thread
        thread.start()

    def wait_for(self, study_id: str, timeout: float | None = None) -> None:
        """Wait until the study's run ends (``timeout`` s at most), through its wait for its
        sites' approval: a study pending approval has no thread yet."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while study_id not in self._runners and self._pending_approval(study_id):
            if deadline is not None and time.monotonic() >= deadline:
                return
            time.sleep(0.05)
        if deadline is not None:
            timeout = max(0.0, deadline - time.monotonic())
        thread = self._runners.get(study_id)
        if thread is not None:
            thread.join(timeout)

    def _pending_approval(self, study_id: str) -> bool:
        with self.db.session() as s:
            study = StudyRepo(s).get(study_id)
            return study is not None and study.status is StudyStatus.PENDING_APPROVAL

    def _run_study(self, study_id: str) -> None:
        """Run a study's engine to its end, in this (the study's own) thread.

        However the engine stops, the study leaves this thread completed, failed, or paused
        when the hub could not write its storage (see :func:`storage_problem`): never still
        ``running`` with no thread to run it, which is what a database error while recording
        a failure used to leave (the thread died, the study waited for a hub restart).
        """
        transport = HubTransport(self.mailbox, self.state, study_id,
                                 revoked=lambda site: self.directory.revoked(site)
                                 or self.withdrawn(study_id, site))
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
            self.state.audit.study_ended(study_id, status.value, message)
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
        self.launch(study_id)
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
        checkpoints = BlobCheckpoints(self.blobs, self.db, study_id,
                                      withdraw=self.mailbox.withdraw)
        # CKKS: the hub holds no context; the sites make the study's key (fedcare.hub.keyrelay).
        # (a lambda: tests build an engine without a transport)
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
        self.state.audit.aggregated(study_id, record.round, record.sites_completed)
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
        self._release(study_id, out, history)
        self.state.audit.model_released(study_id, out)

    def _release(self, study_id: str, out: Path, history: History) -> None:
        """The study's registry entry: beside its outputs (registry.json) and in the
        registry table (immutable; a second release is a new entry, see
        :mod:`fedcare.engine.registry`). Rows and contract hashes from the sites' hellos."""
        from fedcare.engine.registry import release
        from fedcare.hub.store.registry import ModelRegistryRepo

        doc = history.to_dict()
        dataset = (doc.get("config") or {}).get("data", {}).get("dataset")
        with self.db.session() as s:
            hellos = {x.name: x.datasets or [] for x in SiteRepo(s).list()}
        facts: dict[str, dict[str, Any]] = {}
        for site in (doc.get("final") or {}).get("site_metrics") or {}:
            for d in hellos.get(site, []):
                if d.get("name") == dataset:
                    facts[site] = {"train_rows": d.get("rows"),
                                   "contract_hash": d.get("contract_hash"),
                                   "dataset_digest": d.get("digest")}
        entry = release(out, doc, site_facts=facts)
        with self.db.session() as s:
            ModelRegistryRepo(s).add(entry.model_dump(mode="json"))


def _paused(study_id: str, problem: str, *, after: str | None = None) -> str:
    """The reason a paused study shows (``fedcare study status``): what failed, what to do."""
    seen = f" (the study then stopped: {after})" if after else ""
    return (f"the hub cannot write its storage: {problem}{seen}. Free space (or fix the "
            f"disk), then continue from the last completed round with `fedcare study resume "
            f"{study_id}`")
