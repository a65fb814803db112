"""Run a study in simulation: every site on this machine, the deployment engine unchanged.

``simulate`` validates the configuration and every site's data *before* it writes anything,
then drives the :class:`RoundEngine` over an in-memory or worker-process transport, trains the
local-only and pooled baselines on request, and writes the output folder with atomic renames.
"""

from __future__ import annotations

import json
import os
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedcare.config import FederatedData, StudyConfig, content_hash, load_config, parse_config
from fedcare.core.dataset import SiteData, few_rows_warning
from fedcare.core.errors import ConfigError, FedcareError
from fedcare.core.files import atomic_write
from fedcare.core.learning import Learner
from fedcare.core.params import Parameters
from fedcare.data.prepare import Columns
from fedcare.engine.bundle import ModelBundle, study_bundle
from fedcare.engine.checkpoints import CheckpointStore
from fedcare.engine.dp_check import DpAssessment, refuse_unless_learnable
from fedcare.engine.executor import SiteExecutor, baseline_note
from fedcare.engine.history import History, RoundRecord, save_history, set_timing
from fedcare.engine.learner_factory import ModelShape, make_learner
from fedcare.engine.round_engine import EngineSettings, RoundEngine
from fedcare.engine.study import HubPlan, resume_latest, site_executor, study_train
from fedcare.engine.trees import write_tree_outputs
from fedcare.governance.site_policy import SitePolicy
from fedcare.learners.options import check_bins_vs_rows
from fedcare.sim.site_policies import SitePolicies, load_site_policies
from fedcare.sim.sites import build_sites, input_standardization, pooled
from fedcare.strategies.fedavg import FedAvg
from fedcare.transport.inmemory import InMemoryTransport

#: Parallel workers pay a fixed cost per round (pipes, model copies); below this much work per
#: round (parameters x training rows) one process is faster. Measured in benchmarks/.
PARALLEL_WORK_THRESHOLD = 2e8

ProgressFn = Callable[[str, int, int, RoundRecord | None], None]
#: Characters a study name may not bring into its output folder's name: path separators
#: (both kinds, and the drive colon), and control characters.
_UNSAFE_IN_FOLDER = re.compile(r"[/\\:\x00-\x1f\x7f]+")


def default_output_dir(study_name: str, runs: Path = Path("runs")) -> Path:
    """Where a run writes when no folder is given: ``runs/<study name>``, the name made one
    safe path component (separators become ``-``; leading and trailing dots, dashes and
    spaces go), so that a shared study file cannot choose where its outputs land:
    ``../../x`` and ``/abs/x`` used to write outside ``runs/``. The study keeps its name
    everywhere else (reports, task ids)."""
    safe = _UNSAFE_IN_FOLDER.sub("-", study_name).strip(" .-")
    return runs / (safe or "study")


def _as_config(config: StudyConfig | Mapping[str, Any] | str | Path) -> StudyConfig:
    if isinstance(config, StudyConfig):
        return config
    if isinstance(config, (str, Path)):
        return load_config(Path(config))
    return parse_config(config, base_dir=Path.cwd())


def choose_workers(cfg: StudyConfig, sites: Sequence[SiteData], n_params: int) -> int:
    if cfg.run.workers:
        return min(cfg.run.workers, len(sites))
    cores = os.cpu_count() or 1
    work = n_params * sum(len(s.y_train) for s in sites) * max(cfg.train.local_epochs, 1)
    if cores < 2 or len(sites) < 2 or work < PARALLEL_WORK_THRESHOLD:
        return 1
    return min(cores // cfg.run.threads_per_site or 1, len(sites))


class _Run:
    """State of one simulation run; ``simulate`` is the public entry point."""

    def __init__(self, cfg: StudyConfig, output_dir: Path | None, progress: ProgressFn | None,
                 resume: bool, overwrite: bool, force: bool = False,
                 on_dp_check: Callable[[DpAssessment], None] | None = None,
                 site_policies: SitePolicies | None = None) -> None:
        self.cfg = cfg
        #: The simulated sites' own policies (sim.site_policies): checked before training,
        #: applied to every reply.
        self.site_policies = site_policies or SitePolicies({})
        #: Sites a policy refused, with the reason (the history's meta.site_policy).
        self.refused: dict[str, str] = {}
        self.force = force
        self.on_dp_check = on_dp_check
        self.out = output_dir
        self.progress = progress
        self.resume = resume
        self.overwrite = overwrite
        self.hash = content_hash(cfg)

    # -- preparation (no output written yet) ----------------------------------------------
    def prepare(self) -> None:
        cfg = self.cfg
        out = self.out
        if (out is not None and out.exists() and not (self.resume or self.overwrite)
                and ((out / "history.json").exists() or any(out.glob("checkpoints/*")))):
            raise ConfigError(f"output folder {self.out} already holds a run; pass --resume "
                              "to continue it or --overwrite to replace it")
        if isinstance(cfg.data, FederatedData):
            raise ConfigError("data.source = 'federation' runs on a hub and its nodes: use "
                              "`fedcare study submit`; simulate needs local data")
        data = cfg.data
        if self._stats_by_engine():  # the normalizer comes from the sites' stats tasks
            data = data.model_copy(update={"standardize": False})
        self.sites = build_sites(data, cfg.study.seed)
        self.sites, self.refused = self.site_policies.admitted(cfg, self.sites)
        too_few = [w for w in (check_bins_vs_rows(cfg.model, len(s.y_train), s.name)
                               for s in self.sites) if w is not None]
        if too_few:
            raise ConfigError(too_few)
        for site in self.sites:
            warning = few_rows_warning(site.name, len(site.y_train) + len(site.y_test))
            if warning is not None:
                warnings.warn(warning, UserWarning, stacklevel=3)
        if self._stats_by_engine() and self.sites[0].x_train.ndim != 2:
            raise ConfigError("data.standardize: a study with DP or secure aggregation "
                              "standardizes tabular features only; set standardize = false")
        #: The task aux carrying the federation's normalizer (empty: none, or the sites'
        #: data is already scaled in-process).
        self.norm_aux: dict[str, Parameters] = {}
        #: A study that imputes or encodes categories: the sites' rows are raw, the model
        #: sees the encoded columns; set with the normalizer, the sites' encoded rows (the
        #: baselines train on them, pooled rows included).
        self.columns = _columns_of(self.sites, cfg.data.standardize)
        self.encoded: list[SiteData] | None = None
        shape = ModelShape.of_site(self.sites[0])
        if self.columns is not None:
            shape = ModelShape((self.columns.width,), shape.task, shape.num_classes)
        self.shape = shape
        self.learner: Learner = make_learner(cfg, shape)
        self.train = study_train(cfg)
        self.workers = choose_workers(cfg, self.sites, self.learner.initial_parameters()
                                      .spec.total_size)
        self.plan = HubPlan.from_config(
            cfg, [s.name for s in self.sites], mode="simulation", learner=self.learner,
            task=self.sites[0].task.value, workers=self.workers,
            example_bounds={s.name: len(s.y_train) + len(s.y_test) for s in self.sites},
            site_rows=self._site_rows())
        self.initial = self.plan.initial
        self.spec = self.initial.spec
        if self.plan.dp_check is not None and self.on_dp_check is not None:
            self.on_dp_check(self.plan.dp_check)
        refuse_unless_learnable(self.plan.dp_check, force=self.force)
        if cfg.tracking.mlflow_uri is not None:
            from fedcare.tracking import require_mlflow

            require_mlflow()

    def _stats_by_engine(self) -> bool:
        """Whether the feature statistics run as the hub runs them - stats tasks through the
        round engine, so through secure aggregation and with the sites' DP noise and ledger
        charge. A plain simulation pools the same sums in-process (nothing to protect)."""
        from fedcare.engine.privacy import releases_stats

        cfg = self.cfg
        # Imputing or encoding categories always does: the sites' rows stay raw and each
        # executor encodes them with the federation's fill values and level list.
        return releases_stats(cfg) and (cfg.privacy.mode != "none"
                                         or cfg.secure_aggregation.protocol != "none"
                                         or cfg.data.impute != "none"
                                         or bool(cfg.data.categorical))

    def _normalizer(self, engine: RoundEngine, history: History) -> None:
        """As the hub's: computed once by round-0 stats tasks, kept in the history so a
        resumed run reuses the same values; every later task carries it."""
        from fedcare.engine.executor import NORMALIZER
        from fedcare.engine.privacy import stats_noise_multiplier

        if not self._stats_by_engine():
            return
        saved = history.meta.get("normalizer")
        if saved is None:
            bounds = None
            names = self.sites[0].feature_names
            if self.columns is not None:
                names = tuple(names[i] for i in self.columns.numeric)
            if stats_noise_multiplier(self.cfg) is not None:
                from fedcare.data.standardize import stats_bounds

                assert self.cfg.data.stats_clip is not None  # required by the config checks
                try:
                    bounds = stats_bounds(self.cfg.data.stats_clip, names)
                except ValueError as exc:
                    raise ConfigError(str(exc)) from exc
            norm = engine.feature_statistics(len(names), bounds, self.columns)
            history.meta["normalizer"] = {k: v.tolist() for k, v in norm.items()}
        else:
            import numpy as np

            # mean/std are float32; fill values and the level bytes stay float64 on resume
            norm = Parameters({k: np.asarray(v, dtype=np.float32 if k in ("mean", "std")
                                             else np.float64) for k, v in saved.items()})
        self.norm_aux = {NORMALIZER: norm}
        engine.extra_aux = dict(self.norm_aux)
        if self.columns is not None:
            self.encoded = [_encoded(s, norm) for s in self.sites]

    def _test_x(self, site: SiteData) -> Any:
        """A site's test features as the models see them (scaled by the normalizer)."""
        if self.encoded is not None:
            return next(e.x_test for e in self.encoded if e.name == site.name)
        if not self.norm_aux:
            return site.x_test
        from fedcare.data.standardize import apply_standardizer
        from fedcare.engine.executor import NORMALIZER

        norm = self.norm_aux[NORMALIZER]
        return apply_standardizer(site.x_test, norm["mean"], norm["std"])

    def _he_contexts(self) -> tuple[bytes | None, bytes | None]:
        """A CKKS study's secret context (every site's) and public one (the hub's): a
        simulation makes its own, as provisioning does for a federation."""
        if self.cfg.secure_aggregation.protocol != "ckks":
            return None, None
        from fedcare.privacy.he import create_federation_context

        return create_federation_context()

    def _executors(self, sites: Sequence[SiteData], he_secret: bytes | None = None
                   ) -> dict[str, SiteExecutor]:
        """The executors of ``sites``: the study's site half, as a node builds its own."""
        state_root = self.out / "sites" if self.out is not None else None
        names = [s.name for s in sites]
        return {s.name: site_executor(self.cfg, s, i, names, learner=self.learner,
                                      shape=self.shape, he_secret=he_secret,
                                      state_dir=(state_root / s.name) if state_root else None,
                                      release=self.site_policies.gate(s.name))
                for i, s in enumerate(sites)}

    def _transport(self, executors: Mapping[str, SiteExecutor]) -> Any:
        handlers = {n: e.handle for n, e in executors.items()}
        if self.workers <= 1:
            return InMemoryTransport(handlers)
        from fedcare.transport.processes import ProcessTransport

        threads = self.cfg.run.threads_per_site
        def init_worker() -> None:
            _set_threads(threads)

        return ProcessTransport(handlers, self.workers, init=init_worker)

    def _site_rows(self) -> list[dict[str, Any]]:
        """The history's site rows: a simulation knows each site's rows."""
        rows: list[dict[str, Any]] = []
        for s in self.sites:
            row: dict[str, Any] = {"name": s.name, "train_rows": len(s.y_train),
                                   "test_rows": len(s.y_test),
                                   "test_split": s.test_split or _split_words(self.cfg.data)}
            cols = getattr(s, "columns", None)
            if cols is not None:  # rows dropped (e.g. a missing label), by reason
                row["rows_dropped"] = dict(cols.dropped)
            rows.append(row)
        return rows

    # -- the federated run ----------------------------------------------------------------
    def run(self) -> History:
        t_start = time.perf_counter()
        cfg = self.cfg
        old_threads = _set_threads(cfg.run.threads_per_site)
        store = None
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            if self.overwrite and not self.resume:
                _clear_run(self.out)
            store = CheckpointStore(self.out / "checkpoints", every=cfg.run.checkpoint_every)
        he_secret, he_public = self._he_contexts()
        transport = self._transport(self._executors(self.sites, he_secret))
        try:
            engine = self.plan.engine(transport, checkpoints=store, on_round=self._on_round,
                                      he_public=he_public)
            start_round = self._restore(engine, store) if self.resume else 1
            history = engine.history
            if self.site_policies.policies:
                history.meta["site_policy"] = {
                    "sites": sorted(s.name for s in self.sites
                                    if self.site_policies.of(s.name) is not None),
                    "refused": dict(sorted(self.refused.items()))}
            self._normalizer(engine, history)
            final = engine.run(cfg.study.rounds, start_round=start_round)
            if cfg.baselines.local:
                history.baselines["local"] = self._local_baselines(engine)
            if cfg.baselines.centralized:
                history.baselines["centralized"] = self._centralized(engine)
            for block in history.baselines.values():
                block.update(self._baseline_note())
        finally:
            transport.close()
            _set_threads(old_threads)
        history.final_parameters = final
        set_timing(history, time.perf_counter() - t_start)
        from fedcare.reporting.summary import comparisons_json

        history.meta["comparison"] = comparisons_json(history.to_dict())
        if self.out is not None:
            self._write_outputs(history, final)
            from fedcare.sim.audit import write_run_audit

            write_run_audit(self.out, cfg, history)  # audit.jsonl, signed with a per-run key
        if cfg.tracking.mlflow_uri is not None:
            from fedcare.tracking import log_run

            model = None if self.out is not None else self._bundle(history, final).to_bytes()
            history.meta["mlflow_run_id"] = log_run(
                cfg.tracking.mlflow_uri, cfg.tracking.experiment, history.to_dict(), self.out,
                model)
        return history

    def _on_round(self, record: RoundRecord) -> None:
        if self.progress is not None:
            self.progress("federated", record.round, self.cfg.study.rounds, record)

    def _restore(self, engine: RoundEngine, store: CheckpointStore | None) -> int:
        """Continue the run in the output folder from its newest checkpoint (the round to
        run next; 1: there is none)."""
        try:
            return resume_latest(engine, store)
        except ConfigError as exc:
            raise ConfigError(f"{self.out}: {exc.message}; use a new output folder") from exc
        except FedcareError as exc:
            raise FedcareError(f"{self.out}: {exc.message}") from exc

    # -- baselines ------------------------------------------------------------------------
    def _baseline_note(self) -> dict[str, str]:
        """How privacy applies to the baselines (see :func:`baseline_note`)."""
        return baseline_note(self.cfg.privacy.mode)

    def _single_site_study(self, name: str, transport: Any, site: str, total: int) -> Parameters:
        cfg = self.cfg
        settings = EngineSettings(study=name, seed=cfg.study.seed, train=self.train,
                                  evaluate_every=0)
        strategy = FedAvg()
        strategy.initialize(self.initial)
        engine = RoundEngine(settings, strategy, transport, [site], self.initial,
                             History(study=name))
        # Encoded rows (a study that imputes or encodes categories) are scaled already.
        engine.extra_aux = {} if self.encoded is not None else dict(self.norm_aux)
        for r in range(1, cfg.study.rounds + 1):
            try:
                engine.run_round(r)
            except FedcareError as exc:
                what = ("the pooled baseline" if name == "centralized"
                        else f"the local-only baseline of site {site}")
                raise FedcareError(f"{what} failed (baselines train one site alone, without "
                                   f"federation; set [baselines] local/centralized = false to "
                                   f"skip them): {exc.message}") from exc
            if self.progress is not None:
                self.progress(name, r, total, None)
        return engine.parameters

    def _local_baselines(self, engine: RoundEngine) -> dict[str, Any]:
        """Each site trains the initial model alone, through the same ``local_baseline``
        task a networked site answers (:meth:`RoundEngine.local_baselines`): the executors
        train it with the non-DP learner and reply with held-out metrics only."""
        block = engine.local_baselines(self.initial, self.train, self.cfg.study.rounds)
        if block["sites_failed"]:
            raise FedcareError(f"the local-only baseline failed at {sorted(block['sites_failed'])} "
                               "(baselines train each site alone, without federation; set "
                               f"[baselines] local = false to skip them): {block['sites_failed']}")
        if self.progress is not None:
            self.progress("local", 1, 1, None)
        return block

    def _centralized(self, fed_engine: RoundEngine) -> dict[str, Any]:
        from fedcare.engine.history import weighted_mean_metrics

        everything = pooled(self.encoded or self.sites)
        ex = SiteExecutor(everything, self.learner, site_index=len(self.sites),
                          expected=self.spec, strategy="fedavg")
        params = self._single_site_study("centralized", InMemoryTransport({"pooled": ex.handle}),
                                         "pooled", self.cfg.study.rounds)
        per_site = {s.name: self.learner.evaluate(params, self._test_x(s), s.y_test)
                    for s in self.sites if len(s.y_test)}
        weights = {s.name: len(s.y_test) for s in self.sites}
        return {"site_metrics": per_site,
                "global_metrics": weighted_mean_metrics(per_site, weights)}

    # -- outputs --------------------------------------------------------------------------
    def _write_outputs(self, history: History, final: Parameters) -> None:
        assert self.out is not None
        bundle = self._bundle(history, final)
        atomic_write(self.out / "model.safetensors", bundle.to_bytes())
        write_tree_outputs(self.out, bundle, history.meta)
        atomic_write(self.out / "config.json",
                           json.dumps(self.cfg.model_dump(mode="json"), indent=2).encode())
        save_history(history, self.out / "history.json")
        from fedcare.reporting import write_report

        write_report(history.to_dict(), self.out / "report.html")
        from fedcare.engine.registry import dataset_digest, release

        release(self.out, history.to_dict(), site_facts={
            s.name: {"dataset_digest": dataset_digest(s.x_train, s.y_train, s.x_test, s.y_test)}
            for s in self.sites})

    def _bundle(self, history: History, final: Parameters) -> ModelBundle:
        """The final model with its features, standardization and label coding: the one
        the engine computed (``history.meta["normalizer"]``), else the one the sites'
        data was scaled by in-process."""
        # A study that imputes or one-hot encodes feeds the model encoded columns: the bundle
        # describes those (the encoded sites), with the federation's scaling of them.
        s0 = (self.encoded or self.sites)[0]
        norm = history.meta.get("normalizer")
        if norm is None:
            norm = input_standardization(self.cfg.data, self.cfg.study.seed)
        return study_bundle(
            self.cfg, parameters=final, content_hash=self.hash, task=s0.task,
            input_shape=s0.input_shape, num_outputs=s0.num_outputs,
            features=s0.feature_names,
            classes=s0.label_values or tuple(range(s0.num_classes)),
            label_column=getattr(self.cfg.data, "label", None), normalizer=norm,
            rounds=len(history.rounds))


def _split_words(data: Any) -> str:
    """How a source without per-site test files chooses test rows, in words."""
    from fedcare.config import ImageData

    if isinstance(data, ImageData):
        return "the .npz file's test images"
    return f"random {data.test_fraction * 100:g} % split"


def _columns_of(sites: Sequence[SiteData], standardize: bool) -> Columns | None:
    """The study's columns when its sites' rows are raw (it imputes or encodes categories)."""
    from dataclasses import replace

    cols = getattr(sites[0], "columns", None)
    return replace(cols.columns, standardize=standardize) if cols is not None else None


def _encoded(site: SiteData, norm: Parameters) -> SiteData:
    """A site's rows as its executor feeds them to the model, as plain :class:`SiteData`."""
    from fedcare.data.prepare import prepared

    cols = site.columns  # type: ignore[attr-defined]
    return SiteData(site.name, prepared(site.x_train, cols, norm), site.y_train,
                    prepared(site.x_test, cols, norm), site.y_test,
                    cols.columns.encoded_names({}), site.task, site.num_classes)


def _clear_run(out: Path) -> None:
    import shutil

    for name in ("checkpoints", "sites"):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in ("history.json", "model.safetensors", "report.html", "config.json"):
        (out / name).unlink(missing_ok=True)


def _set_threads(n: int) -> int:
    import torch

    old = torch.get_num_threads()
    if n != old:
        torch.set_num_threads(n)
    return old


def simulate(config: StudyConfig | Mapping[str, Any] | str | Path, *,
             output_dir: str | Path | None = None, progress: bool | ProgressFn = False,
             resume: bool = False, overwrite: bool = False, force: bool = False,
             on_dp_check: Callable[[DpAssessment], None] | None = None,
             site_policies: Mapping[str, SitePolicy | str | Path] | None = None) -> History:
    """Run a study in simulation and return its :class:`History`.

    ``config`` is a study file path, a mapping with the same keys as the file, or a parsed
    :class:`StudyConfig`. With ``output_dir`` the run writes ``history.json``, the final model
    (``model.safetensors``: a bundle that :func:`fedcare.load_model` reads), per-round
    checkpoints and ``report.html`` there, and ``resume=True`` continues from the newest
    checkpoint. ``progress=True`` shows rich progress bars. A DP study whose noise drowns
    its updates (:mod:`fedcare.engine.dp_check`) is refused before training unless
    ``force=True``; ``on_dp_check`` receives that assessment before training (the CLI prints
    it). ``site_policies``: site policies (files or loaded) by site name, ``"*"`` for every
    other site (:mod:`fedcare.sim.site_policies`): a site whose policy refuses the study is
    left out, the run stops when too few remain, and each site's replies carry only the
    metrics its policy releases.
    """
    cfg = _as_config(config)
    fn: ProgressFn | None
    if progress is True:
        from fedcare.sim.progress import RichProgress

        with RichProgress() as bar:
            return simulate(cfg, output_dir=output_dir, progress=bar, resume=resume,
                            overwrite=overwrite, force=force, on_dp_check=on_dp_check,
                            site_policies=site_policies)
    fn = progress if callable(progress) else None
    policies = SitePolicies(load_site_policies(site_policies))
    run = _Run(cfg, Path(output_dir) if output_dir is not None else None, fn, resume, overwrite,
               force, on_dp_check, policies)
    run.prepare()
    return run.run()
