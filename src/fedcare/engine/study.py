"""One study, assembled once for the simulation runner, the hub and the node.

A study's configuration resolves to the same engine wherever it runs (architecture review
P2): the hub half (:class:`HubPlan`: engine settings, strategy, initial model, secure
aggregation, DP's hub half and the history with its one set of keys, :func:`history_meta`)
and the site half (:func:`site_executor`). The callers only choose transports, where files
go and, at a node, what the site's own policy adds (its ledger, its CKKS key custody).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fedcare.config import FederatedData, StudyConfig, content_hash
from fedcare.core.dataset import SiteData
from fedcare.core.errors import ConfigError
from fedcare.core.learning import Learner
from fedcare.core.messages import TrainConfig
from fedcare.core.params import Parameters
from fedcare.engine.bundle import _version
from fedcare.engine.checkpoints import CheckpointSink
from fedcare.engine.dp_check import DpAssessment, assess_dp
from fedcare.engine.executor import LocalBaseline, SiteExecutor
from fedcare.engine.history import History, RoundRecord, timestamp
from fedcare.engine.learner_factory import ModelShape, make_learner
from fedcare.engine.privacy import HubPrivacy, hub_privacy, site_privacy
from fedcare.engine.round_engine import EngineSettings, RoundEngine
from fedcare.engine.secure import SecureAggregator, SecureSettings, SecureSite
from fedcare.learners.metrics import primary_metric
from fedcare.strategies import build_strategy
from fedcare.strategies.base import Strategy
from fedcare.transport.base import Transport

if TYPE_CHECKING:
    from fedcare.engine.ckks_custody import SiteIdentity, StudyKeys
    from fedcare.engine.custom_learner import SiteCodeSettings
    from fedcare.engine.site_policy import ReleaseGate

#: Where a study runs: every site in this process, or a hub and its nodes.
Mode = Literal["simulation", "network"]


def study_train(cfg: StudyConfig) -> TrainConfig:
    """The study's local training settings, before its strategy adds its own (FedProx's mu):
    what the local-only and pooled baselines train with."""
    return TrainConfig(**cfg.train.model_dump())


def history_meta(cfg: StudyConfig, *, mode: Mode, task: str, parameters: int,
                 study_id: str | None = None, created: str | None = None,
                 workers: int | None = None,
                 example_bounds: Mapping[str, int] | None = None,
                 dp_check: DpAssessment | None = None) -> dict[str, Any]:
    """The history's description of a study: the same keys for a simulation and a networked
    study (None where a fact does not apply: a simulation has no ``study_id``, a hub no
    ``workers``), so reports, tracking and comparisons read one layout.

    ``created``: when the run started or the study was submitted (default: now);
    ``example_bounds``: the most examples each site may claim (kept, so a resumed study
    keeps the bounds it started with); ``dp_check``: a DP-FedAvg study's noise assessment.
    """
    name, higher = primary_metric(task, cfg.study.primary_metric)
    return {"fedcare_version": _version(), "mode": mode, "study_id": study_id,
            "created": created or timestamp(), "config_hash": content_hash(cfg),
            "task": task, "primary_metric": name, "higher_is_better": higher,
            "strategy": cfg.strategy.name, "model": cfg.model.name,
            "rounds_planned": cfg.study.rounds, "workers": workers, "parameters": parameters,
            "example_bounds": dict(example_bounds) if example_bounds is not None else None,
            "dp_check": dp_check.to_json() if dp_check is not None else None,
            "config": cfg.model_dump(mode="json")}


@dataclass
class HubPlan:
    """The hub half of a study: everything its :class:`RoundEngine` is built from.

    One plan makes one engine (the strategy and history are the engine's from then on).
    """

    cfg: StudyConfig
    sites: list[str]
    #: The study's model, without DP (the hub needs its layout and initial weights; the
    #: baselines train it).
    learner: Learner
    initial: Parameters
    settings: EngineSettings
    strategy: Strategy
    secure: SecureSettings | None
    privacy: HubPrivacy | None
    history: History
    example_bounds: dict[str, int] | None
    dp_check: DpAssessment | None

    @classmethod
    def from_config(cls, cfg: StudyConfig, sites: Sequence[str], *, mode: Mode,
                    learner: Learner | None = None, task: str | None = None,
                    study_id: str | None = None,
                    created: str | None = None, workers: int | None = None,
                    example_bounds: Mapping[str, int] | None = None,
                    site_rows: Sequence[dict[str, Any]] | None = None,
                    round_timeout: float | None = None) -> HubPlan:
        """The plan of ``cfg`` over ``sites``.

        ``learner``: the study's (non-DP) learner when the caller built it from its sites'
        data (a simulation), and ``task`` its task; default: both from the federated data's
        declaration (the hub). ``study_id`` names the engine's tasks (default: the study's name);
        ``site_rows``: the history's site rows (default: names only, rows unknown);
        ``round_timeout``: the wait when the study sets no ``run.round_timeout``.
        """
        if learner is None:
            if not isinstance(cfg.data, FederatedData):
                raise ConfigError("a study on local data needs its learner built from its "
                                  "sites' data")
            learner = make_learner(cfg, ModelShape.of_federated(cfg.data))
        initial = learner.initial_parameters()
        strategy = build_strategy(cfg.strategy, num_sites=len(sites))
        # Validates the strategy against the training settings now (SCAFFOLD needs SGD).
        train = strategy.train_config(study_train(cfg))
        settings = EngineSettings(study=study_id or cfg.study.name, seed=cfg.study.seed,
                                  train=train, evaluate_every=cfg.run.evaluate_every,
                                  round_timeout=cfg.run.round_timeout or round_timeout)
        dp_check = assess_dp(cfg, len(sites), initial.spec.total_size)
        meta = history_meta(cfg, mode=mode, task=task or _task_of(cfg),
                            parameters=initial.spec.total_size,
                            study_id=study_id, created=created, workers=workers,
                            example_bounds=example_bounds, dp_check=dp_check)
        rows = (list(site_rows) if site_rows is not None else
                [{"name": s, "train_rows": None, "test_rows": None} for s in sites])
        return cls(cfg, list(sites), learner, initial, settings, strategy,
                   SecureSettings.of(cfg), hub_privacy(cfg, len(sites)),
                   History(study=cfg.study.name, meta=meta, sites=rows),
                   dict(example_bounds) if example_bounds is not None else None, dp_check)

    def engine(self, transport: Transport, *, checkpoints: CheckpointSink | None = None,
               on_round: Callable[[RoundRecord], None] | None = None,
               he_public: bytes | None = None,
               attempts: Callable[[int], int] | None = None) -> RoundEngine:
        """The study's engine on ``transport``, at its initial model (a resume then calls
        :meth:`RoundEngine.resume` with the sink's latest checkpoint, see
        :func:`resume_latest`).

        A study with secure aggregation always gets the hub half of it here (a caller cannot
        leave it out): ``he_public`` is a simulation's public CKKS context (a hub holds none:
        its sites make the study's key), ``attempts`` a hub's count of protocol attempts per
        round (see :class:`SecureAggregator`)."""
        secure = (SecureAggregator(self.secure, he_public, attempts=attempts)
                  if self.secure is not None else None)
        return RoundEngine(self.settings, self.strategy, transport, self.sites, self.initial,
                           self.history, checkpoints=checkpoints, on_round=on_round,
                           secure=secure, privacy=self.privacy,
                           example_bounds=self.example_bounds)


def _task_of(cfg: StudyConfig) -> str:
    if isinstance(cfg.data, FederatedData):
        return cfg.data.task
    raise ConfigError("the study's task is known from its data only")


def resume_latest(engine: RoundEngine, checkpoints: CheckpointSink | None) -> int:
    """Resume ``engine`` from the newest checkpoint in ``checkpoints``; the round to run next
    (1: nothing saved yet, a fresh start)."""
    latest = checkpoints.latest() if checkpoints is not None else None
    return engine.resume(latest) if latest is not None else 1


def site_executor(cfg: StudyConfig, data: SiteData, index: int, sites: Sequence[str], *,
                  learner: Learner | None = None, shape: ModelShape | None = None,
                  ledger: Any | None = None, he_secret: bytes | None = None,
                  identity: SiteIdentity | None = None, keys: StudyKeys | None = None,
                  state_dir: Path | None = None, local_baseline: bool = True,
                  baseline_refusal: str | None = None,
                  code: SiteCodeSettings | None = None,
                  release: ReleaseGate | None = None) -> SiteExecutor:
    """The site half of a study at site ``data.name`` (``index``-th of ``sites``).

    ``learner``: the study's non-DP learner shared by a simulation's sites (default: built
    here); ``shape``: what the model takes (default: the federated data's declared shape,
    else the site's). DP-SGD derives each site's noise from its own rows, so the site then
    trains its own learner. ``ledger``: the site's privacy ledger; ``he_secret``: one secret
    CKKS context for every site (simulation); ``identity``/``keys``: a networked site's
    CKKS key custody. ``local_baseline``: whether the approved study lets the hub ask for a
    local-only baseline (``baseline_refusal``: why this site will not train it).
    ``code``: the site's settings for running the study's own code (model ``custom``).
    ``release``: the per-task rules of the site's policy (:mod:`fedcare.engine.site_policy`).
    """
    if shape is None:
        shape = (ModelShape.of_federated(cfg.data) if isinstance(cfg.data, FederatedData)
                 else ModelShape.of_site(data))
    dp_sgd = cfg.privacy.mode == "dp_sgd"
    if dp_sgd:
        trains = make_learner(cfg, shape, rows=len(data.y_train), code=code)
    else:
        trains = learner if learner is not None else make_learner(cfg, shape, code=code)
    settings = SecureSettings.of(cfg, he_context=he_secret)
    secure = (SecureSite(data.name, settings, sites, identity=identity, keys=keys)
              if settings is not None else None)
    baseline = None
    if local_baseline:
        # The baselines are references trained without DP, as in simulation.
        plain = None
        if dp_sgd and baseline_refusal is None:
            plain = learner if learner is not None else make_learner(cfg, shape,
                                                                     code=code)
        baseline = LocalBaseline(cfg.study.rounds, learner=plain, refusal=baseline_refusal)
    return SiteExecutor(data, trains, site_index=index,
                        expected=(learner or trains).initial_parameters().spec,
                        state_dir=state_dir,
                        secure=secure,
                        privacy=site_privacy(cfg, len(data.y_train), len(sites), ledger),
                        strategy=cfg.strategy.name, local_baseline=baseline,
                        release=release)
