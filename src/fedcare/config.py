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

import pydantic
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedcare.core.errors import ConfigError

if TYPE_CHECKING:
    from fedcare.privacy.dp.spec import PrivacySpec


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StudySection(_Section):
    name: str = Field("study", min_length=1, max_length=100,
                      description="Study name, used in task ids and reports.")
    seed: int = Field(0, description="Seed for every random choice (init, batches, sampling).")
    rounds: int = Field(10, ge=1, le=100_000, description="Number of federated rounds.")


class SiteFile(_Section):
    name: str = Field(min_length=1, max_length=100, description="Site name.")
    path: Path = Field(description="CSV (.csv, .csv.gz) or Parquet file, relative to the config.")


StatsRange = tuple[pydantic.FiniteFloat, pydantic.FiniteFloat]


class _DataCommon(_Section):
    test_fraction: float = Field(0.2, ge=0, lt=1,
                                 description="Share of each site's rows held out for testing.")
    standardize: bool = Field(True, description=(
        "Scale tabular features by the federation's mean/std (computed from per-site sums, "
        "no rows pooled)."))
    stats_clip: StatsRange | dict[str, StatsRange] | None = Field(None, description=(
        "DP studies that standardize: each feature's range [low, high] (one pair for every "
        "feature, or a table feature = [low, high]); values are clipped to it for the feature "
        "statistics only, which bounds what one row adds, so the sums can be noised."))

    @model_validator(mode="after")
    def _stats_clip_ranges(self) -> _DataCommon:
        clip = self.stats_clip
        ranges = clip.items() if isinstance(clip, dict) else [("", clip)] if clip else []
        bad = [name or "every feature" for name, (lo, hi) in ranges if not lo < hi]
        if bad:
            raise ValueError(f"stats_clip: low must be below high ({', '.join(bad)})")
        return self


class BuiltinData(_DataCommon):
    source: Literal["builtin"] = Field(description="Data shipped with a dependency.")
    dataset: Literal["breast_cancer"] = Field(
        "breast_cancer", description="Built-in dataset: breast_cancer (scikit-learn, 569 rows).")
    sites: int = Field(4, ge=1, le=10_000, description="Number of simulated sites.")
    partition: Literal["iid", "dirichlet"] = Field(
        "dirichlet", description="How rows are split: iid or dirichlet (label skew).")
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration (smaller = more skew).")


class SyntheticData(_DataCommon):
    source: Literal["synthetic"] = Field(description="Generated classification data.")
    sites: int = Field(4, ge=1, le=10_000, description="Number of simulated sites.")
    rows_per_site: int = Field(1000, ge=2, description="Rows generated per site.")
    n_features: int = Field(20, ge=1, description="Number of features.")
    classes: int = Field(2, ge=2, description="Number of classes.")
    partition: Literal["iid", "dirichlet"] = Field("iid", description="iid or dirichlet.")
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration.")


class FilesData(_DataCommon):
    source: Literal["files"] = Field(description="One CSV/Parquet file per site.")
    label: str = Field(min_length=1, description="Label column (present at every site).")
    features: list[str] | None = Field(
        None, description="Feature columns; default: every column except the label.")
    site: list[SiteFile] = Field(min_length=1, description="Sites: [[data.site]] name, path.")


class PooledFileData(_DataCommon):
    source: Literal["table"] = Field(description="One table split into sites by a partitioner.")
    path: Path = Field(description="CSV or Parquet file, relative to the config.")
    label: str = Field(min_length=1, description="Label column.")
    features: list[str] | None = Field(None, description="Feature columns (default: all).")
    sites: int = Field(4, ge=1, description="Number of sites (iid/dirichlet).")
    partition: Literal["iid", "dirichlet", "attribute"] = Field(
        "iid", description="iid, dirichlet, or attribute (one site per value of a column).")
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration.")
    attribute: str | None = Field(None, description="Column naming each row's site.")


class ImageData(_DataCommon):
    source: Literal["npz"] = Field(description="MedMNIST-style .npz images split over sites.")
    path: Path = Field(description=".npz with train/val/test _images and _labels arrays.")
    sites: int = Field(3, ge=1, description="Number of sites the training images are split into.")
    partition: Literal["iid", "dirichlet"] = Field("iid", description="iid or dirichlet.")
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration.")
    standardize: bool = Field(False, description="Images are scaled to [0, 1] already.")


class ImageFolderSite(_Section):
    name: str = Field(min_length=1, max_length=100, description="Site name.")
    folder: Path = Field(description="Folder of DICOM (.dcm) or NIfTI (.nii, .nii.gz) images.")
    labels: Path = Field(description="CSV with columns file,label (class ids 0..k-1).")


class ImageFolderData(_DataCommon):
    source: Literal["image_folder"] = Field(description=(
        "One folder of DICOM or NIfTI images with a label file per site."))
    site: list[ImageFolderSite] = Field(min_length=1, description=(
        "Sites: [[data.site]] name, folder, labels."))
    size: int = Field(64, ge=8, le=1024, description=(
        "Images are resized (shorter side) and centre-cropped to size x size."))
    window: list[float] | None = Field(None, min_length=2, max_length=2, description=(
        "Intensity window [low, high] for every image (default: DICOM window tags, else each "
        "image's min..max)."))
    classes: int | None = Field(None, ge=2, description="Number of classes (default: from "
                                                        "the labels).")
    standardize: bool = Field(False, description="Images are scaled to [0, 1] already.")


class FederatedData(_DataCommon):
    """A networked study: each node maps ``dataset`` to its own local table."""

    source: Literal["federation"] = Field(description="Data held by the federation's nodes.")
    dataset: str = Field(min_length=1, description="Dataset name each node maps to a local file.")
    label: str = Field(min_length=1, description="Label column (present at every site).")
    features: list[str] = Field(default_factory=list, description=(
        "Feature columns, in order (explicit, so every site trains on the same problem); "
        "empty for an image dataset."))
    image_size: int | None = Field(None, ge=8, le=1024, description=(
        "Image datasets: each node maps the dataset to a folder of DICOM/NIfTI images with a "
        "label file, resized and centre-cropped to image_size x image_size."))
    task: Literal["binary", "multiclass", "regression"] = Field(
        "binary", description="binary, multiclass or regression.")
    classes: int = Field(2, ge=2, description="Number of classes (multiclass).")
    standardize: bool = Field(True, description=(
        "Scale features by the federation's mean/std, computed from each site's sums, sums "
        "of squares and row counts (no row leaves a site; sites refuse below 10 rows). A "
        "secure study sends them through secure aggregation (the hub learns only the "
        "federation's totals); a DP study clips them to data.stats_clip and noises them "
        "(privacy.stats_epsilon)."))
    sites: list[str] | None = Field(None, description=(
        "Sites taking part (default: every site that holds the dataset)."))
    contract_hash: str | None = Field(None, min_length=64, max_length=64, description=(
        "Content hash of the data contract every site must have built its dataset with "
        "(`fedcare data check` prints it); sites with another contract refuse."))


DataSection = Annotated[
    BuiltinData | SyntheticData | FilesData | PooledFileData | ImageData | ImageFolderData
    | FederatedData,
    Field(discriminator="source"),
]


class ModelSection(_Section):
    name: Literal["logreg", "mlp", "cnn", "lstm", "gru", "transformer", "sgd_linear"] = Field(
        "logreg", description=("Model: logreg, mlp, cnn (2-D images), lstm/gru (sequences), "
                               "transformer (tabular/sequence), sgd_linear (scikit-learn)."))
    hidden: list[int] | int | None = Field(
        None, description="mlp: hidden layer sizes; lstm/gru: hidden size.")
    dropout: float | None = Field(None, ge=0, lt=1, description="mlp: dropout rate.")
    channels: list[int] | None = Field(None, description="cnn: channels per conv block.")
    layers: int | None = Field(None, ge=1, description="lstm/gru/transformer: layer count.")
    d_model: int | None = Field(None, ge=4, description="transformer: model width.")
    heads: int | None = Field(None, ge=1, description="transformer: attention heads.")

    def options(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump(exclude={"name"}).items() if v is not None}


class TrainSection(_Section):
    local_epochs: int = Field(1, ge=0, description="Local epochs per round.")
    local_steps: int = Field(0, ge=0, description="Local mini-batch steps per round (overrides "
                                                  "local_epochs when > 0).")
    batch_size: int = Field(32, ge=1, description="Mini-batch size.")
    lr: float = Field(0.1, gt=0, description="Local learning rate.")
    optimizer: Literal["sgd", "adam"] = Field("sgd", description="Local optimizer: sgd or adam.")
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD momentum.")
    weight_decay: float = Field(0.0, ge=0, description="L2 weight decay.")


class _StrategyCommon(_Section):
    fraction: float = Field(1.0, gt=0, le=1, description="Share of sites sampled per round.")
    min_sites: int = Field(1, ge=1, description="Minimum sites sampled per round.")
    min_completed: int = Field(1, ge=1, description="Minimum sites that must answer for a round "
                                                    "to count.")


class FedAvgSection(_StrategyCommon):
    name: Literal["fedavg"] = Field(description="FedAvg (McMahan et al. 2017).")


class FedProxSection(_StrategyCommon):
    name: Literal["fedprox"] = Field(description="FedProx (Li et al. 2020).")
    mu: float = Field(0.01, gt=0, description="fedprox: proximal coefficient mu.")


class FedOptSection(_StrategyCommon):
    name: Literal["fedadam", "fedyogi", "fedadagrad"] = Field(
        description="Adaptive server optimizers (Reddi et al. 2021).")
    server_lr: float = Field(0.01, gt=0, description="fedopt/scaffold: server learning rate.")
    beta1: float = Field(0.9, ge=0, lt=1, description="fedopt: first-moment decay.")
    beta2: float = Field(0.99, ge=0, lt=1, description="fedopt: second-moment decay.")
    tau: float = Field(1e-3, gt=0, description="fedopt: adaptivity tau.")


class ScaffoldSection(_StrategyCommon):
    name: Literal["scaffold"] = Field(description="SCAFFOLD (Karimireddy et al. 2020).")
    server_lr: float = Field(1.0, gt=0, description="Server learning rate.")


StrategySection = Annotated[
    FedAvgSection | FedProxSection | FedOptSection | ScaffoldSection,
    Field(discriminator="name"),
]


class SecureAggregationSection(_Section):
    protocol: Literal["none", "secagg", "secagg+", "ckks"] = Field("none", description=(
        "Protect updates so the hub learns only their sum: secagg (pairwise masking with "
        "dropout recovery, Bonawitz 2017), secagg+ (sparse masking graph for many sites, "
        "Bell 2020), ckks (homomorphic encryption, TenSEAL), or none."))
    threshold: float = Field(0.67, gt=0.5, le=1, description=(
        "secagg: share of a round's sites that must survive every step (a strict majority)."))
    frac_bits: int = Field(24, ge=8, le=40, description=(
        "secagg: fixed-point fractional bits (precision 2^-frac_bits per value)."))


class BaselinesSection(_Section):
    local: bool = Field(True, description="Also train each site alone (local-only baseline).")
    centralized: bool = Field(True, description="Also train on all data pooled (upper bound).")


class RunSection(_Section):
    workers: int = Field(0, ge=0, le=256, description=(
        "Worker processes for sites: 0 = auto (parallel when the model is big enough to gain), "
        "1 = one process."))
    threads_per_site: int = Field(1, ge=1, le=256, description="Torch threads per site process.")
    evaluate_every: int = Field(1, ge=0, description=(
        "Evaluate the global model at every site every N rounds (0 = only at the end)."))
    checkpoint_every: int = Field(1, ge=0, description="Checkpoint every N rounds (0 = never).")
    round_timeout: float | None = Field(None, gt=0, description="Seconds before a round gives "
                                                                 "up on sites that did not answer.")


#: Zoo models Opacus computes per-example gradients for (see ``check_dp_compatible``).
DP_SGD_MODELS = ("logreg", "mlp", "cnn")


class PrivacySection(_Section):
    """Differential privacy of a study (absent or ``mode = "none"``: no DP)."""

    mode: Literal["none", "dp_sgd", "dp_fedavg_central", "dp_fedavg_distributed"] = Field(
        "none", description=(
            "none; dp_sgd (record-level DP-SGD at each site, Opacus); dp_fedavg_central "
            "(site-level DP-FedAvg, the hub adds the noise); dp_fedavg_distributed (each site "
            "adds its share of the noise; meant for secure aggregation)."))
    clip: float = Field(1.0, gt=0, allow_inf_nan=False, description=(
        "DP-SGD: per-example gradient norm bound; DP-FedAvg: per-site update norm bound."))
    noise_multiplier: float | None = Field(None, ge=0, allow_inf_nan=False, description=(
        "Noise std / clip. Give this or target_epsilon, not both."))
    target_epsilon: float | None = Field(None, gt=0, allow_inf_nan=False, description=(
        "Budget-first: derive the noise multiplier that reaches this epsilon over the study "
        "(DP-SGD: per site, from its row count)."))
    delta: float = Field(1e-5, gt=0, lt=1, allow_inf_nan=False,
                         description="The delta of (epsilon, delta)-DP.")
    accountant: Literal["pld", "rdp"] = Field(
        "pld", description="Privacy accountant: pld (tight) or rdp (looser, faster).")
    stats_epsilon: float = Field(1.0, gt=0, allow_inf_nan=False, description=(
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


class StudyConfig(_Section):
    study: StudySection = Field(default_factory=StudySection)  # type: ignore[arg-type]
    data: DataSection
    model: ModelSection = Field(default_factory=ModelSection)  # type: ignore[arg-type]
    train: TrainSection = Field(default_factory=TrainSection)  # type: ignore[arg-type]
    strategy: StrategySection = Field(
        default_factory=lambda: FedAvgSection(name="fedavg"))  # type: ignore[call-arg]
    secure_aggregation: SecureAggregationSection = Field(
        default_factory=SecureAggregationSection)  # type: ignore[arg-type]
    baselines: BaselinesSection = Field(default_factory=BaselinesSection)  # type: ignore[arg-type]
    run: RunSection = Field(default_factory=RunSection)  # type: ignore[arg-type]
    privacy: PrivacySection = Field(default_factory=PrivacySection)  # type: ignore[arg-type]


_TAGS = {"builtin", "synthetic", "files", "table", "npz", "image_folder", "federation", "fedavg",
         "fedprox", "fedadam", "fedyogi", "fedadagrad", "scaffold"}


def content_hash(cfg: StudyConfig) -> str:
    """SHA-256 of the study definition: what a site approves, and what resume checks."""
    import hashlib
    import json

    doc = cfg.model_dump(mode="json")
    # No [privacy] section: hash exactly as before DP existed, so approvals and resumes hold.
    if cfg.privacy == PrivacySection():  # type: ignore[call-arg]
        del doc["privacy"]
    if cfg.secure_aggregation == SecureAggregationSection():  # type: ignore[call-arg]
        del doc["secure_aggregation"]
    # Options added later hash as before while they keep their defaults.
    if doc.get("privacy", {}).get("stats_epsilon") == 1.0:
        del doc["privacy"]["stats_epsilon"]
    if doc["data"].get("stats_clip", "") is None:
        del doc["data"]["stats_clip"]
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _format_error(err: Mapping[str, Any]) -> str:
    parts = list(err["loc"])
    if len(parts) > 1 and parts[0] in ("data", "strategy") and parts[1] in _TAGS:
        del parts[1]  # pydantic puts the union's tag in the path; users never wrote it
    loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in parts)
    loc = loc.replace(".[", "[")
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"unknown key '{loc}'"
    if kind == "missing":
        return f"missing key '{loc}'"
    if kind in ("union_tag_invalid", "literal_error"):
        return f"'{loc}': {err['msg']}"
    got = err.get("input")
    shown = f" (got {got!r})" if isinstance(got, (str, int, float, bool)) else ""
    return f"'{loc}': {err['msg']}{shown}"


def parse_config(data: Mapping[str, Any], *, base_dir: Path | None = None,
                 source: str | None = None) -> StudyConfig:
    """Validate a config mapping; relative file paths are resolved against ``base_dir``."""
    if not isinstance(data, Mapping):
        raise ConfigError("the configuration must be a table/mapping", source=source)
    try:
        cfg = StudyConfig.model_validate(dict(data))
    except pydantic.ValidationError as exc:
        raise ConfigError([_format_error(e) for e in exc.errors()], source=source) from None
    problems = _cross_checks(cfg)
    if problems:
        raise ConfigError(problems, source=source)
    return _resolve_paths(cfg, base_dir) if base_dir is not None else cfg


def _cross_checks(cfg: StudyConfig) -> list[str]:
    """Rules that span sections."""
    problems = []
    d = cfg.data
    if isinstance(d, FederatedData):
        if d.image_size is None and not d.features:
            problems.append("'data.features': list the feature columns (or set "
                            "data.image_size for an image dataset)")
        if d.image_size is not None and (d.features or d.standardize):
            problems.append("'data.image_size': an image dataset takes no features and "
                            "standardize = false (images are scaled to [0, 1])")
    if cfg.secure_aggregation.protocol != "none" and cfg.strategy.name == "scaffold":
        problems.append("'secure_aggregation.protocol': SCAFFOLD needs each site's control "
                        "variate, which secure aggregation hides; use fedavg, fedprox or fedopt")
    problems += _privacy_checks(cfg)
    return problems


def _privacy_checks(cfg: StudyConfig) -> list[str]:
    """DP settings that depend on other sections."""
    mode, problems = cfg.privacy.mode, []
    if mode == "dp_sgd" and cfg.model.name not in DP_SGD_MODELS:
        problems.append(f"'privacy.mode': dp_sgd needs model.name in {', '.join(DP_SGD_MODELS)} "
                        f"(Opacus cannot compute per-example gradients for "
                        f"{cfg.model.name!r})")
    if mode.startswith("dp_fedavg") and cfg.strategy.name == "scaffold":
        problems.append(f"'privacy.mode': {mode} cannot be combined with strategy scaffold "
                        "(its control variates leave the site without noise)")
    d = cfg.data
    if mode != "none" and d.standardize and d.stats_clip is None:
        problems.append("'data.stats_clip': a DP study that standardizes features releases "
                        "noised feature statistics, which needs each feature's range: set "
                        "data.stats_clip = [low, high] (or a table feature = [low, high]), or "
                        "data.standardize = false")
    if (isinstance(d, FederatedData) and isinstance(d.stats_clip, dict)
            and set(d.stats_clip) != set(d.features)):
        problems.append(f"'data.stats_clip': give a range for every feature in data.features "
                        f"and no other (missing {sorted(set(d.features) - set(d.stats_clip))},"
                        f" unknown {sorted(set(d.stats_clip) - set(d.features))})")
    if mode == "dp_fedavg_distributed" and cfg.secure_aggregation.protocol == "none":
        problems.append("'privacy.mode': dp_fedavg_distributed needs secure_aggregation "
                        "(without it the hub sees each update with 1/sqrt(n) of the noise); "
                        "set secure_aggregation.protocol or use dp_fedavg_central")
    return problems


def _resolve_paths(cfg: StudyConfig, base: Path) -> StudyConfig:
    d = cfg.data
    if isinstance(d, FilesData):
        sites = [s.model_copy(update={"path": base / s.path}) for s in d.site]
        d = d.model_copy(update={"site": sites})
    elif isinstance(d, (PooledFileData, ImageData)):
        d = d.model_copy(update={"path": base / d.path})
    elif isinstance(d, ImageFolderData):
        folders = [x.model_copy(update={"folder": base / x.folder, "labels": base / x.labels})
                   for x in d.site]
        d = d.model_copy(update={"site": folders})
    return cfg.model_copy(update={"data": d})


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


def describe_keys() -> list[tuple[str, str, str]]:
    """(key, default, description) for every config key, for --help and the README."""
    rows: list[tuple[str, str, str]] = []

    def walk(prefix: str, model: type[BaseModel]) -> None:
        for name, field in model.model_fields.items():
            default = "" if field.is_required() or field.default_factory else repr(field.default)
            rows.append((f"{prefix}.{name}", default, field.description or ""))

    for section, model in (("study", StudySection), ("train", TrainSection),
                           ("secure_aggregation", SecureAggregationSection),
                           ("baselines", BaselinesSection), ("run", RunSection),
                           ("model", ModelSection), ("privacy", PrivacySection)):
        walk(section, model)
    for data_model in (BuiltinData, SyntheticData, FilesData, PooledFileData, ImageData,
                       ImageFolderData, FederatedData):
        src = data_model.model_fields["source"].annotation.__args__[0]  # type: ignore[union-attr]
        walk(f"data[source={src}]", data_model)
    for strategy_model in (FedAvgSection, FedProxSection, FedOptSection, ScaffoldSection):
        walk("strategy", strategy_model)
    seen: set[str] = set()
    unique = []
    for row in rows:
        if row[0] not in seen:
            seen.add(row[0])
            unique.append(row)
    return unique


def derive_noise(cfg: StudyConfig, rows_per_site: int | None = None, *,
                 n_sites: int | None = None) -> float:
    """The study's noise multiplier: ``privacy.noise_multiplier``, or (budget-first) the
    smallest one reaching ``privacy.target_epsilon`` over the whole study.

    DP-SGD: ``q = batch_size / rows`` and ``steps = steps per round x rounds``, so the answer
    depends on the site's row count - each site derives its own noise and its epsilon is per
    site (only the site knows its rows). DP-FedAvg: ``q`` is the share of sites sampled per
    round (``n_sites`` given: ``max(min_sites, ceil(fraction x n_sites)) / n_sites`` as the
    sampler draws; else ``strategy.fraction``) and ``steps = rounds``.
    Raises :class:`~fedcare.privacy.dp.errors.PrivacyBudgetError` when the budget is unreachable.
    """
    import math

    p = cfg.privacy
    if p.mode == "none":
        raise ConfigError("privacy.mode is 'none': the study has no noise to derive")
    if p.noise_multiplier is not None:
        return float(p.noise_multiplier)
    assert p.target_epsilon is not None  # guaranteed by PrivacySection's validator
    from fedcare.privacy.dp.accounting import noise_for_budget

    rounds = cfg.study.rounds
    if p.mode == "dp_sgd":
        if rows_per_site is None or isinstance(rows_per_site, bool) or rows_per_site < 1:
            raise ConfigError("budget-first DP-SGD needs the site's training row count "
                              f"(rows_per_site >= 1), got {rows_per_site!r}")
        t = cfg.train
        q = min(1.0, t.batch_size / rows_per_site)
        per_round = t.local_steps or t.local_epochs * math.ceil(rows_per_site / t.batch_size)
        return noise_for_budget(p.target_epsilon, p.delta, q, per_round * rounds, p.accountant)
    s = cfg.strategy
    if n_sites is not None:
        if isinstance(n_sites, bool) or n_sites < 1:
            raise ConfigError(f"n_sites must be >= 1, got {n_sites!r}")
        sampled = n_sites if s.fraction >= 1 else min(
            n_sites, max(s.min_sites, math.ceil(s.fraction * n_sites), 1))
        q = sampled / n_sites
    else:
        q = s.fraction
    return noise_for_budget(p.target_epsilon, p.delta, q, rounds, p.accountant)


def privacy_spec(cfg: StudyConfig, rows_per_site: int | None = None, *,
                 n_sites: int | None = None) -> PrivacySpec | None:
    """The study's resolved :class:`~fedcare.privacy.dp.spec.PrivacySpec` (None without DP);
    arguments as :func:`derive_noise`."""
    if cfg.privacy.mode == "none":
        return None
    from fedcare.privacy.dp.spec import PrivacySpec

    p = cfg.privacy
    return PrivacySpec(p.mode, clip=p.clip,  # type: ignore[arg-type]
                       noise_multiplier=derive_noise(cfg, rows_per_site, n_sites=n_sites),
                       delta=p.delta, accountant=p.accountant)  # type: ignore[arg-type]
