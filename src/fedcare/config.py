"""The study configuration: one schema for ``fedcare simulate`` files and the Python API.

Every key is declared here with a description; ``fedcare simulate --help`` and the README's
reference are generated from these descriptions, so documentation cannot drift from the code.
Unknown keys and wrong types are refused with the key's full path (``strategy.server_lr``).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from fedcare.core.errors import ConfigError
from fedcare.core.limits import (
    MAX_AUGMENT_SHIFT,
    MAX_BATCH_SIZE,
    MAX_LOCAL_EPOCHS,
    MAX_LOCAL_STEPS,
    MAX_LR,
    MAX_SEED,
    MAX_WEIGHT_DECAY,
)
from fedcare.core.settings import Section, allowed, reference_rows, validate_section
from fedcare.data.sources.base import DataOptions
from fedcare.data.sources.builtin import BuiltinData as BuiltinData
from fedcare.data.sources.clinical import ClinicalData as ClinicalData
from fedcare.data.sources.federation import FederatedData as FederatedData
from fedcare.data.sources.files import FilesData as FilesData
from fedcare.data.sources.image_folder import ImageFolderData as ImageFolderData
from fedcare.data.sources.npz import ImageData as ImageData
from fedcare.data.sources.registry import all_sources, sources_that
from fedcare.data.sources.synthetic import SyntheticData as SyntheticData
from fedcare.data.sources.table import PooledFileData as PooledFileData
from fedcare.learners.options import LogregOptions, ModelOptions, all_models
from fedcare.strategies.base import SiteAlgorithm, StrategyOptions
from fedcare.strategies.fedavg import FedAvgOptions
from fedcare.strategies.registry import all_strategies, describe, options_types

# Every number has an upper bound and non-finite floats are refused (audit F21: lr = inf
# failed late on the wire, local_epochs = 10**9 trained for ever): core.settings.Section
# refuses inf/nan everywhere, and a test walks the schema so that a new option cannot forget
# its bounds.

#: Rounds a study may run.
MAX_ROUNDS = 100_000
#: Width of a model layer.
MAX_WIDTH = 100_000
#: Seconds a round may wait for its sites (a week).
MAX_ROUND_TIMEOUT = 7 * 24 * 3600.0
#: Layers of a sequence/transformer model, and entries of a hidden/channels list.
MAX_LAYERS = 1_000


#: The longest a study may wait for its sites' approval (hours): one year.
MAX_APPROVAL_HOURS = 8760.0


class StudySection(Section):
    name: str = Field("study", min_length=1, max_length=100,
                      description="Study name, used in task ids and reports.")
    seed: int = Field(0, ge=0, le=MAX_SEED,
                      description="Seed for every random choice (init, batches, sampling).")
    rounds: int = Field(10, ge=1, le=MAX_ROUNDS, description="Number of federated rounds.")
    primary_metric: Literal["accuracy", "auc", "balanced_accuracy", "f1", "brier", "rmse",
                            "mse", "mae"] | None = Field(None, description=(
        "Metric the report leads with and compares, shown beside the trivial (constant) "
        "prediction's score: accuracy, auc, balanced_accuracy, f1 or brier for "
        "classification (auc: binary only), rmse, mse or mae for regression. Default: "
        "accuracy, or mse for regression."))
    description: str | None = Field(None, min_length=1, max_length=4000, description=(
        "Intended use, in the study owner's words: the population, the setting and the "
        "decision the model supports. Part of what each site approves; the model card's "
        "'Intended use' section."))
    approval_deadline_hours: float = Field(
        168.0, gt=0, le=MAX_APPROVAL_HOURS, description=(
            "Networked studies: how long a submitted study waits for every participating "
            "site's data steward to approve it (`fedcare node approve HASH`) before it ends "
            "as expired, naming the sites that did not decide. Simulation ignores it."))


def contract_matches(wanted: str, actual: str) -> bool:
    """Whether a study's ``data.contract_hash`` (the full hash or a prefix of at least 8 hex
    digits) names the contract whose full hash is ``actual``.

    What a prefix means: the study, and so the content hash every site approves, says "the
    contract whose hash starts with these digits". Each site still trains only on the table
    its *own* contract file built, so a prefix cannot make a site use another definition; what
    it weakens is the guarantee that all sites used the same one (8 hex digits are 32 bits,
    within reach of someone who crafts a contract to collide). The hub refuses a prefix that
    matches two contracts among the study's sites; give the full 64 digits to rule it out.
    """
    return actual.lower().startswith(wanted.lower())


def _data_union() -> Any:
    """The ``[data]`` section: one registered data source's options, chosen by ``source``."""
    from typing import Union

    return Annotated[Union[tuple(all_sources().values())],  # noqa: UP007
                     Field(discriminator="source")]


if TYPE_CHECKING:
    DataSection = DataOptions
else:
    DataSection = _data_union()


def _model_union() -> Any:
    """The ``[model]`` section: one registered model's options, chosen by ``name``."""
    from typing import Union

    return Annotated[Union[tuple(all_models().values())],  # noqa: UP007
                     Field(discriminator="name")]


if TYPE_CHECKING:
    ModelSection = ModelOptions
else:
    ModelSection = _model_union()

#: The keys of the single ``[model]`` table studies had before each model declared its own
#: options. :func:`content_hash` writes a model section in that shape, so the hash of every
#: study - what its sites approved - is unchanged by the new declaration.
_LEGACY_MODEL_KEYS = ("name", "hidden", "dropout", "channels", "layers", "d_model", "heads")


class TrainSection(Section):
    # Bounds shared with the wire's TrainConfig (fedcare.core.limits): a study the hub
    # accepts is one every site's decoder accepts.
    local_epochs: int = Field(1, ge=0, le=MAX_LOCAL_EPOCHS, description="Local epochs per round.")
    local_steps: int = Field(0, ge=0, le=MAX_LOCAL_STEPS, description=(
        "Local mini-batch steps per round (overrides local_epochs when > 0)."))
    batch_size: int = Field(32, ge=1, le=MAX_BATCH_SIZE, description="Mini-batch size.")
    lr: float = Field(0.1, gt=0, le=MAX_LR, allow_inf_nan=False,
                      description="Local learning rate.")
    optimizer: Literal["sgd", "adam"] = Field("sgd", description="Local optimizer: sgd or adam.")
    momentum: float = Field(0.0, ge=0, lt=1, allow_inf_nan=False, description="SGD momentum.")
    weight_decay: float = Field(0.0, ge=0, le=MAX_WEIGHT_DECAY, allow_inf_nan=False,
                                description="L2 weight decay.")
    lr_schedule: Literal["constant", "cosine"] = Field("constant", description=(
        "Learning rate over each round's local steps: constant, or cosine (from lr down to 0 "
        "along half a cosine, starting again at lr every round)."))
    augment: Literal["none", "flip", "shift", "flip_shift"] = Field("none", description=(
        "Image studies: random changes to each training batch at the site (never to test "
        "images), drawn from the round's seed so a run is reproducible: flip (mirror half "
        "the images left-right), shift (move each image by up to augment_shift pixels, "
        "edges repeated), flip_shift (both), or none."))
    augment_shift: int = Field(2, ge=1, le=MAX_AUGMENT_SHIFT, description=(
        "Largest shift in pixels of augment = shift / flip_shift."))


#: [train] keys added after studies were approved, with the default each is dropped from the
#: content hash at (a study that leaves them alone hashes as before they existed).
_LATER_TRAIN_DEFAULTS: dict[str, object] = {"lr_schedule": "constant", "augment": "none",
                                             "augment_shift": 2}


def _strategy_union() -> Any:
    """The ``[strategy]`` section: one registered strategy's options, chosen by ``name``."""
    from typing import Union

    return Annotated[Union[options_types()], Field(discriminator="name")]  # noqa: UP007


if TYPE_CHECKING:
    StrategySection = StrategyOptions
else:
    StrategySection = _strategy_union()


class SecureAggregationSection(Section):
    protocol: Literal["none", "secagg", "secagg+", "ckks"] = Field("none", description=(
        "Protect updates so the hub learns only their sum: secagg (pairwise masking with "
        "dropout recovery, Bonawitz 2017), secagg+ (sparse masking graph for many sites, "
        "Bell 2020), ckks (homomorphic encryption, TenSEAL), or none."))
    threshold: float | None = Field(None, gt=0.5, le=1, description=(
        "Share of a round's sites that must survive every step (above 0.5). Default: "
        "derived, t = max(strategy.min_completed, a strict majority of the round's sites), so "
        "a round can finish with min_completed sites; a study whose threshold would never "
        "let it is refused."))
    frac_bits: int = Field(24, ge=8, le=40, description=(
        "secagg: fixed-point fractional bits (precision 2^-frac_bits per value)."))


class BaselinesSection(Section):
    local: bool = Field(True, description="Also train each site alone (local-only baseline).")
    centralized: bool = Field(True, description="Also train on all data pooled (upper bound).")
    local_at_sites: bool = Field(False, description=(
        "Networked studies (data.source = \"federation\"): after the rounds, each site also "
        "trains the same initial model alone on its own training rows and reports only its "
        "held-out metrics (local-only baseline; a site's node config may refuse). "
        "Simulations use local."))


class TrackingSection(Section):
    mlflow_uri: str | None = Field(None, min_length=1, max_length=2000, description=(
        "Log the finished run to MLflow (pip install 'fedcare[tracking]'): the tracking URI, "
        "e.g. file:./mlruns, sqlite:///mlflow.db or https://mlflow.example.org. Per-round "
        "and per-site metrics, the configuration, the final model and report as artifacts. "
        "A simulation logs it; a hub does not."))
    experiment: str | None = Field(None, min_length=1, max_length=200, description=(
        "MLflow experiment name (default: the study's name)."))


class RunSection(Section):
    workers: int = Field(0, ge=0, le=256, description=(
        "Worker processes for sites: 0 = auto (parallel when the model is big enough to gain), "
        "1 = one process."))
    threads_per_site: int = Field(1, ge=1, le=256, description="Torch threads per site process.")
    evaluate_every: int = Field(1, ge=0, le=MAX_ROUNDS, description=(
        "Evaluate the global model at every site every N rounds (0 = only at the end)."))
    checkpoint_every: int = Field(1, ge=0, le=MAX_ROUNDS,
                                  description="Checkpoint every N rounds (0 = never).")
    round_timeout: float | None = Field(None, gt=0, le=MAX_ROUND_TIMEOUT, allow_inf_nan=False,
                                        description="Seconds before a round gives up on sites "
                                                    "that did not answer (at most a week).")


class PrivacySection(Section):
    """Differential privacy of a study (absent or ``mode = "none"``: no DP)."""

    mode: Literal["none", "dp_sgd", "dp_fedavg_central", "dp_fedavg_distributed"] = Field(
        "none", description=(
            "none; dp_sgd (record-level DP-SGD at each site, Opacus); dp_fedavg_central "
            "(site-level DP-FedAvg, the hub adds the noise); dp_fedavg_distributed (each site "
            "adds its share of the noise; meant for secure aggregation)."))
    clip: float = Field(1.0, gt=0, le=1e6, allow_inf_nan=False, description=(
        "DP-SGD: per-example gradient norm bound; DP-FedAvg: per-site update norm bound."))
    noise_multiplier: float | None = Field(None, ge=0, le=1e6, allow_inf_nan=False, description=(
        "Noise std / clip. Give this or target_epsilon, not both."))
    target_epsilon: float | None = Field(None, gt=0, le=1e6, allow_inf_nan=False, description=(
        "Budget-first: derive the noise multiplier that reaches this epsilon over the study "
        "(DP-SGD: per site, from its row count)."))
    delta: float = Field(1e-5, gt=0, lt=1, allow_inf_nan=False,
                         description="The delta of (epsilon, delta)-DP.")
    accountant: Literal["pld", "rdp"] = Field(
        "pld", description="Privacy accountant: pld (tight) or rdp (looser, faster).")
    stats_epsilon: float = Field(1.0, gt=0, le=100, description=(
        "Epsilon (at privacy.delta) of the noised feature statistics a study that "
        "standardizes releases once before training; spent on top of the training budget "
        "and composed with it in the reported epsilon and in each site's ledger."))

    @model_validator(mode="after")
    def _one_noise_source(self) -> PrivacySection:
        if self.mode != "none" and (self.noise_multiplier is None) == (
                self.target_epsilon is None):
            raise ValueError("give exactly one of privacy.noise_multiplier or "
                             "privacy.target_epsilon when privacy.mode is not 'none'")
        return self


#: Sites whose stewards an export's quorum may name.
MAX_QUORUM = 10_000


class AirlockSection(Section):
    quorum: int | None = Field(None, ge=1, le=MAX_QUORUM, description=(
        "Site stewards who must approve an export of the study's results (a model file, a "
        "results table, a report) before it can be downloaded; any rejection refuses it. "
        "Default: every participating site. Part of the content hash every site approves, "
        "so a site agrees to the quorum when it agrees to the study; more than the study's "
        "sites means all of them."))


class StudyConfig(Section):
    study: StudySection = Field(default_factory=StudySection)  # type: ignore[arg-type]
    data: DataSection
    model: ModelSection = Field(default_factory=LogregOptions)
    train: TrainSection = Field(default_factory=TrainSection)  # type: ignore[arg-type]
    strategy: StrategySection = Field(default_factory=FedAvgOptions)
    secure_aggregation: SecureAggregationSection = Field(
        default_factory=SecureAggregationSection)  # type: ignore[arg-type]
    baselines: BaselinesSection = Field(default_factory=BaselinesSection)  # type: ignore[arg-type]
    run: RunSection = Field(default_factory=RunSection)  # type: ignore[arg-type]
    privacy: PrivacySection = Field(default_factory=PrivacySection)  # type: ignore[arg-type]
    tracking: TrackingSection = Field(default_factory=TrackingSection)  # type: ignore[arg-type]
    airlock: AirlockSection = Field(default_factory=AirlockSection)  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _model_rounds(self) -> StudyConfig:
        """A model that fixes its rounds (a tree ensemble) sets ``study.rounds`` when the
        study leaves it out (a different explicit value is refused by the cross-checks)."""
        n = self.model.rounds()
        if n is not None and "rounds" not in self.study.model_fields_set:
            object.__setattr__(self, "study", self.study.model_copy(update={"rounds": n}))
        return self


def _tags() -> set[str]:
    """Discriminator values pydantic puts in an error's path (users never write them)."""
    return set(all_sources()) | set(all_strategies()) | set(all_models())


def content_hash(cfg: StudyConfig) -> str:
    """SHA-256 of the study definition: what a site approves, and what resume checks."""
    import hashlib
    import json

    doc = cfg.model_dump(mode="json")
    given = cfg.model.model_dump(mode="json", include=cfg.model.model_fields_set | {"name"})
    doc["model"] = {key: given.get(key) for key in _LEGACY_MODEL_KEYS}
    # A model declared after the legacy table (xgboost) hashes every one of its options.
    newer = set(type(cfg.model).model_fields) - set(_LEGACY_MODEL_KEYS)
    if newer:
        doc["model"]["options"] = cfg.model.model_dump(mode="json", include=newer)
    # No [privacy] section: hash exactly as before DP existed, so approvals and resumes hold.
    if cfg.privacy == PrivacySection():  # type: ignore[call-arg]
        del doc["privacy"]
    if cfg.secure_aggregation == SecureAggregationSection():  # type: ignore[call-arg]
        del doc["secure_aggregation"]
    doc["data"] = cfg.data.hashed(doc["data"])  # a source's own later keys
    if cfg.study.primary_metric is None:  # likewise: studies that choose none hash as before
        del doc["study"]["primary_metric"]
    if cfg.study.description is None:
        del doc["study"]["description"]
    if cfg.study.approval_deadline_hours == 168.0:  # added later: hashes as before at default
        del doc["study"]["approval_deadline_hours"]
    # Options added later hash as before while they keep their defaults.
    if doc.get("privacy", {}).get("stats_epsilon") == 1.0:
        del doc["privacy"]["stats_epsilon"]
    if doc["data"].get("stats_clip", "") is None:
        del doc["data"]["stats_clip"]
    if cfg.tracking == TrackingSection():  # type: ignore[call-arg]
        del doc["tracking"]
    if cfg.airlock == AirlockSection():  # type: ignore[call-arg]
        del doc["airlock"]
    if doc["baselines"].get("local_at_sites") is False:
        del doc["baselines"]["local_at_sites"]
    for key, default in (("impute", "none"), ("categorical", []), ("max_levels", 20)):
        if doc["data"].get(key, None) == default:
            del doc["data"][key]
    for key, train_default in _LATER_TRAIN_DEFAULTS.items():
        if doc["train"].get(key, None) == train_default:
            del doc["train"][key]
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def portable_config(cfg: StudyConfig) -> dict[str, Any]:
    """The study as the hub stores it and sends it to the sites, such that each site, which
    recomputes the content hash from it, gets the hash the researcher's `fedcare study hash`
    printed. The legacy model keys hash only as given (:func:`content_hash`), so the model
    section keeps only the keys the study set; a full dump would set them all and change the
    hash. Raises :class:`ConfigError` if the round trip would still change the hash."""
    doc = cfg.model_dump(mode="json")
    doc["model"] = {**cfg.model.model_dump(mode="json", exclude_unset=True),
                    "name": cfg.model.name}
    if content_hash(parse_config(doc)) != content_hash(cfg):
        raise ConfigError("this study's content hash does not survive being stored and sent "
                          "to the sites (a fedcare bug: please report it with the study file)")
    return doc


def parse_config(data: Mapping[str, Any], *, base_dir: Path | None = None,
                 source: str | None = None) -> StudyConfig:
    """Validate a config mapping; relative file paths are resolved against ``base_dir``."""
    if not isinstance(data, Mapping):
        raise ConfigError("the configuration must be a table/mapping", source=source)
    cfg = validate_section(StudyConfig, dict(data), source=source, tags=_tags())
    problems = _cross_checks(cfg)
    if problems:
        raise ConfigError(problems, source=source)
    if base_dir is not None:
        cfg = _resolve_paths(cfg, base_dir)
    missing = cfg.model.unresolved()
    if missing is not None:
        raise ConfigError(missing, source=source)
    return cfg


def _cross_checks(cfg: StudyConfig) -> list[str]:
    """Rules that span sections."""
    d = cfg.data
    problems = d.problems()
    if cfg.baselines.local_at_sites and d.capabilities.simulated:
        problems.append(f"'baselines.local_at_sites' asks the sites of a networked study "
                        f"(data.source = {_either(sources_that('simulated'), negate=True)}); "
                        "a simulation trains its local-only baseline with baselines.local")
    if (d.impute != "none" or d.categorical) and not d.capabilities.raw_columns:
        problems.append("'data.impute' / 'data.categorical' apply to tables read from files "
                        f"(data.source = {_either(sources_that('raw_columns'))})")
    problems += _model_checks(cfg)
    strategy = all_strategies()[cfg.strategy.name]
    if cfg.secure_aggregation.protocol != "none" and not strategy.capabilities.aggregates_a_sum:
        usable = ", ".join(n for n, c in all_strategies().items()
                           if c.capabilities.aggregates_a_sum)
        problems.append(f"'secure_aggregation.protocol': strategy {cfg.strategy.name} needs "
                        "each site's individual update, which secure aggregation hides; "
                        f"use one of {usable}")
    problems += _privacy_checks(cfg)
    if cfg.train.augment != "none" and not cfg.model.capabilities.input.startswith("image"):
        problems.append(f"'train.augment': {cfg.train.augment} changes images; model "
                        f"{cfg.model.name!r} takes {cfg.model.capabilities.input} input")
    n_sites = d.declared_sites()
    if n_sites is not None:
        problems += secure_round_problems(cfg, n_sites)
    task = d.declared_task()
    if task is not None and cfg.study.primary_metric is not None:
        from fedcare.learners.metrics import primary_metric

        try:
            primary_metric(task, cfg.study.primary_metric)
        except ConfigError as exc:
            problems.append(exc.message)
    return problems


def _model_checks(cfg: StudyConfig) -> list[str]:
    """What a model's declaration asks of the rest of the study (its strategy, its rounds,
    its input)."""
    problems = []
    m, caps = cfg.model, cfg.model.capabilities
    if caps.strategy is not None and cfg.strategy.name != caps.strategy:
        problems.append(f"'strategy.name': model {m.name} is aggregated by strategy "
                        f"{caps.strategy} only; set [strategy] name = \"{caps.strategy}\"")
    owners = [n for n, o in all_models().items() if o.capabilities.strategy == cfg.strategy.name]
    if owners and m.name not in owners:
        problems.append(f"'strategy.name': strategy {cfg.strategy.name} aggregates model "
                        f"{' or '.join(owners)} only, not {m.name}")
    strategy = all_strategies()[cfg.strategy.name]
    if not caps.site_half and type(strategy.site_half) is not SiteAlgorithm:
        usable = ", ".join(n for n, c in all_strategies().items()
                           if type(c.site_half) is SiteAlgorithm)
        problems.append(f"'strategy.name': strategy {cfg.strategy.name} corrects each local "
                        f"gradient step at the site, which model {m.name} does not let "
                        f"fedcare do; use one of {usable}")
    if not caps.optimizers and (cfg.train.optimizer != "sgd"
                                or cfg.train.lr_schedule != "constant"):
        problems.append(f"'train.optimizer' / 'train.lr_schedule': model {m.name} is trained "
                        "by code that receives lr, momentum, weight_decay and mu but no "
                        "optimizer or schedule; leave them at sgd and constant")
    n = m.rounds()
    if n is not None and cfg.study.rounds != n:
        problems.append(f"'study.rounds': model {m.name} runs exactly {n} rounds (one sketch "
                        "round, then one per level of every tree: 1 + n_trees x max_depth); "
                        f"leave study.rounds out or set it to {n}")
    if caps.backend == "trees" and not cfg.data.standardize:
        problems.append(f"'data.standardize': model {m.name} bins tabular features on the "
                        "federation's standardized scale (its saved model takes raw values "
                        "again); set data.standardize = true")
    return problems


def _either(names: list[str], *, negate: bool = False) -> str:
    """``a, b or c``; with ``negate``, the sources *not* in ``names``, quoted when one."""
    if negate:
        names = [n for n in all_sources() if n not in names]
    if len(names) == 1:
        return f'"{names[0]}"'
    return f"{', '.join(names[:-1])} or {names[-1]}"


def secure_round_problems(cfg: StudyConfig, n_sites: int) -> list[str]:
    """A secure study over ``n_sites`` sites whose survivor threshold and
    ``strategy.min_completed`` contradict each other (see
    :func:`fedcare.privacy.secagg.config.threshold_problems`); checked when the config names
    its sites and again when the hub resolves them at submission."""
    if cfg.secure_aggregation.protocol == "none":
        return []
    import math

    from fedcare.privacy.secagg.config import threshold_problems

    s = cfg.strategy
    n = n_sites if s.fraction >= 1 else min(
        n_sites, max(s.min_sites, math.ceil(s.fraction * n_sites), 1))
    return threshold_problems(n, cfg.secure_aggregation.threshold, s.min_completed)


def _privacy_checks(cfg: StudyConfig) -> list[str]:
    """DP settings that depend on other sections."""
    mode, problems = cfg.privacy.mode, []
    if mode != "none" and cfg.model.capabilities.no_dp is not None:
        return [f"'privacy.mode': differential privacy is not supported for {cfg.model.name} "
                f"studies: {cfg.model.capabilities.no_dp}"]
    if mode == "dp_sgd" and not cfg.model.capabilities.dp_sgd:
        usable = ", ".join(n for n, m in all_models().items() if m.capabilities.dp_sgd)
        problems.append(f"'privacy.mode': dp_sgd needs model.name in {usable} (Opacus cannot "
                        f"compute per-example gradients for {cfg.model.name!r})")
    strategy = all_strategies()[cfg.strategy.name]
    if mode.startswith("dp_fedavg") and not strategy.capabilities.site_level_dp:
        problems.append(f"'privacy.mode': {mode} cannot be combined with strategy "
                        f"{cfg.strategy.name} (it needs more from each site than a clipped, "
                        "noised update)")
    d = cfg.data
    if mode != "none" and d.categorical:
        problems.append("'data.categorical': a DP study cannot discover its categories (the "
                        "level names each site holds would be released without noise); "
                        "encode them as numeric columns at the sites, or drop them")
    if mode != "none" and d.impute != "none" and d.stats_clip is None:
        problems.append("'data.stats_clip': a DP study that imputes releases noised sums "
                        "of the observed values, which needs each feature's range: set "
                        "data.stats_clip = [low, high] (or a table feature = [low, high])")
    if mode != "none" and d.standardize and d.stats_clip is None:
        problems.append("'data.stats_clip': a DP study that standardizes features releases "
                        "noised feature statistics, which needs each feature's range: set "
                        "data.stats_clip = [low, high] (or a table feature = [low, high]), or "
                        "data.standardize = false")
    declared = d.declared_features()
    numeric = [f for f in declared or [] if f not in d.categorical]
    if (declared is not None and isinstance(d.stats_clip, dict)
            and set(d.stats_clip) != set(numeric)):
        problems.append(f"'data.stats_clip': give a range for every numeric feature in "
                        f"data.features and no other (missing "
                        f"{sorted(set(numeric) - set(d.stats_clip))},"
                        f" unknown {sorted(set(d.stats_clip) - set(numeric))})")
    if mode == "dp_fedavg_distributed" and cfg.secure_aggregation.protocol == "none":
        problems.append("'privacy.mode': dp_fedavg_distributed needs secure_aggregation "
                        "(without it the hub sees each update with 1/sqrt(n) of the noise); "
                        "set secure_aggregation.protocol or use dp_fedavg_central")
    return problems


def _resolve_paths(cfg: StudyConfig, base: Path) -> StudyConfig:
    return cfg.model_copy(update={"data": cfg.data.resolved(base),
                                  "model": cfg.model.resolved(base)})


def load_config(path: Path) -> StudyConfig:
    """Read a TOML (.toml) or YAML (.yaml/.yml) study file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            raise ConfigError(f"config must be .toml, .yaml or .yml, got {path.name}")
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise ConfigError(f"cannot parse {path.name}: {exc}", source=str(path)) from exc
    except ImportError as exc:  # pragma: no cover - pyyaml is a dependency
        raise ConfigError("YAML support needs pyyaml") from exc
    return parse_config(data or {}, base_dir=path.parent.resolve(), source=str(path))


def _plugin_key_rows(section: str, uses: dict[str, list[tuple[str, str, str]]]
                     ) -> list[tuple[str, str, str]]:
    """One row per key several plugins may declare: ``uses[key]`` lists (plugin, default,
    description); defaults and descriptions that differ are given per plugin."""
    def grouped(declared: list[tuple[str, str, str]], index: int) -> str:
        values = list(dict.fromkeys(d[index] for d in declared))
        if len(values) == 1:
            return values[0]
        return "; ".join(f"{', '.join(d[0] for d in declared if d[index] == v)}: "
                         f"{v.rstrip('.')}" for v in values)

    return [(f"{section}.{key}", grouped(declared, 1),
             f"[{', '.join(d[0] for d in declared)}] {grouped(declared, 2)}")
            for key, declared in uses.items()]


def _model_rows() -> list[tuple[str, str, str]]:
    """``model.*`` rows from the model registry: every name with its summary, then each
    model's own keys with the models they apply to."""
    models = all_models()
    names = "; ".join(f"{n} ({m.summary})" for n, m in models.items())
    rows = [("model.name", "'logreg'", f"Model, one of: {names}.")]
    own: dict[str, list[tuple[str, str, str]]] = {}
    for name, cls in models.items():
        for key, field in cls.model_fields.items():
            if key != "name":
                own.setdefault(key, []).append((name, repr(field.default),
                                                (field.description or "").split(": ", 1)[-1]))
    return rows + _plugin_key_rows("model", own)


def _strategy_rows() -> list[tuple[str, str, str]]:
    """``strategy.*`` rows from the registry: the names with what each is, the keys every
    strategy shares, then each strategy's own keys with the strategies they apply to."""
    strategies = all_strategies()
    names = "; ".join(f"{n} ({describe(n)})" for n in strategies)
    rows = [("strategy.name", "'fedavg'", f"Aggregation strategy, one of: {names}.")]
    common = set(StrategyOptions.model_fields) - {"name"}
    rows += [(f"strategy.{k}", repr(f.default), f.description or "")
             for k, f in StrategyOptions.model_fields.items() if k in common]
    own: dict[str, list[tuple[str, str, str]]] = {}
    for name, cls in strategies.items():
        for key, field in cls.Options.model_fields.items():
            if key in common or key == "name":
                continue
            own.setdefault(key, []).append((name, repr(field.default),
                                            allowed(field.annotation, field.description or "")))
    return rows + _plugin_key_rows("strategy", own)


def _sentence_part(summary: str) -> str:
    """A summary sentence to go inside another: no final stop, lower-case unless its first
    word is a name (``MedMNIST-style``)."""
    first = summary.split(" ", 1)[0]
    text = summary[0].lower() + summary[1:] if first[1:].islower() else summary
    return text.rstrip(".")


def _data_rows() -> list[tuple[str, str, str]]:
    """``data.*`` rows from the source registry: every source with its summary, then each
    source's keys (``data[source=NAME].key``)."""
    sources = all_sources()
    names = "; ".join(f"{n} ({_sentence_part(cls.source_summary())})"
                      for n, cls in sources.items())
    rows = [("data.source", "", f"Where the sites' data comes from, one of: {names} (keys "
                                "per source below).")]
    for name, cls in sources.items():
        rows += reference_rows(cls, f"data[source={name}]", recurse=False)
    return rows


def describe_keys() -> list[tuple[str, str, str]]:
    """(key, default, description) for every config key, for --help and the README; every
    choice lists its allowed values (strategies come from their registry)."""
    rows: list[tuple[str, str, str]] = []

    def walk(prefix: str, model: type[BaseModel]) -> None:
        rows.extend(reference_rows(model, prefix, recurse=False))

    for section, model in (("study", StudySection), ("train", TrainSection),
                           ("secure_aggregation", SecureAggregationSection),
                           ("baselines", BaselinesSection), ("run", RunSection),
                           ("privacy", PrivacySection), ("airlock", AirlockSection)):
        walk(section, model)
    rows += _model_rows()
    rows += _data_rows()
    rows += _strategy_rows()
    seen: set[str] = set()
    unique = []
    for row in rows:
        if row[0] not in seen:
            seen.add(row[0])
            unique.append(row)
    return unique
