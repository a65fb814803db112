"""Every model a study can name declares its options here, once (no torch import).

Each model's ``[model]`` section is a :class:`ModelOptions` subclass registered with
:func:`register_model`: the declaration gives the study config's discriminated union, the
validation and its messages, the config reference and ``--help`` (with every model's summary),
and :class:`ModelCapabilities` that the compatibility rules read (DP-SGD, backend) instead of a
list of names. The layers themselves are built by the backend (:mod:`.models` for the PyTorch
zoo, :mod:`.sklearn_learner`), which imports torch or scikit-learn only when a model is built:
reading a study must not cost a torch import.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import Field, model_validator

from fedcare.core.errors import ConfigError
from fedcare.core.settings import Section, literal_values
from fedcare.trees.options import TreeOptions
from fedcare.trees.options import check_bins_vs_rows as tree_rows_check

#: Largest layer width / count any zoo option accepts: a typo of 10**9 units is refused at
#: config time, not discovered as an out-of-memory at every site. 2**24 units still allows the
#: ~500 MB single-layer models the large-model benchmark and test send over slow links.
MAX_WIDTH = 2**24
MAX_LAYERS = 64
#: A layer's width (hidden units, channels).
Width = Annotated[int, Field(ge=1, le=MAX_WIDTH)]


@dataclass(frozen=True)
class ModelCapabilities:
    """``backend``: which learner trains it. ``dp_sgd``: Opacus computes its per-example
    gradients (record-level DP-SGD). ``input``: the per-example input it takes, for messages.
    ``strategy``: the only strategy that can aggregate it (None: any). ``no_dp``: why no
    differential privacy applies to it (None: the study's DP rules decide). ``site_half``:
    its learner applies a strategy's gradient correction (SCAFFOLD's c - c_i); a model whose
    training fedcare cannot reach into (a study's own code) refuses such strategies.
    ``optimizers``: its learner honours ``train.optimizer`` and ``train.lr_schedule`` (else
    a study must leave them at sgd and constant)."""

    backend: Literal["torch", "sklearn", "trees", "custom"] = "torch"
    dp_sgd: bool = False
    input: str = "flat (n, features)"
    strategy: str | None = None
    no_dp: str | None = None
    site_half: bool = True
    optimizers: bool = True


class ModelOptions(Section):
    """The ``[model]`` section every model shares; subclasses narrow ``name``."""

    name: str
    summary: ClassVar[str] = ""
    capabilities: ClassVar[ModelCapabilities] = ModelCapabilities()

    def options(self) -> dict[str, Any]:
        """The model's own options (everything but its name), as the builder takes them."""
        return self.model_dump(exclude={"name"})

    def rounds(self) -> int | None:
        """The rounds the model itself fixes (a tree ensemble's growth), or None."""
        return None

    def resolved(self, base: Path) -> ModelOptions:
        """These options with their files read, relative to the study file's folder
        ``base`` (a model that ships its own code embeds its text here)."""
        return self

    def unresolved(self) -> str | None:
        """Why these options cannot be used as they are (a file not read yet), or None."""
        return None


M = TypeVar("M", bound=ModelOptions)
_MODELS: dict[str, type[ModelOptions]] = {}


def register_model(cls: type[M]) -> type[M]:
    names = literal_values(cls.model_fields["name"].annotation)
    if len(names) != 1 or not cls.summary:
        raise TypeError(f"{cls.__qualname__} must narrow name to one Literal and set a summary")
    if names[0] in _MODELS and _MODELS[names[0]] is not cls:
        raise TypeError(f"model name {names[0]!r} is registered twice")
    _MODELS[names[0]] = cls
    return cls


def all_models() -> dict[str, type[ModelOptions]]:
    """Every registered model's options class by name (declaration order)."""
    return dict(_MODELS)


def model_options(name: str, options: dict[str, Any] | None = None) -> ModelOptions:
    """Validate ``options`` for model ``name`` (the builder's entry point for tests and the
    Python API; a study's section arrives validated already)."""
    import pydantic

    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(_MODELS)}")
    try:
        return _MODELS[name].model_validate({"name": name, **(options or {})})
    except pydantic.ValidationError as exc:
        problems = []
        for e in exc.errors():
            key = ".".join(str(p) for p in e["loc"])
            if e["type"] == "extra_forbidden":
                valid = sorted(set(_MODELS[name].model_fields) - {"name"})
                problems.append(f"model {name!r} has no option {key!r}; valid options: "
                                f"{', '.join(valid) or 'none'}")
            else:
                problems.append(f"model option {key or name}: {e['msg']}")
        raise ConfigError(problems) from None


@register_model
class LogregOptions(ModelOptions):
    name: Literal["logreg"] = "logreg"
    summary: ClassVar[str] = "logistic/linear regression: one nn.Linear on flat (n, F) input"
    capabilities: ClassVar[ModelCapabilities] = ModelCapabilities(dp_sgd=True)


def _sizes(value: Any) -> Any:
    """A width list accepts one bare number too (``hidden = 64``)."""
    return [value] if isinstance(value, int) and not isinstance(value, bool) else value


@register_model
class MlpOptions(ModelOptions):
    name: Literal["mlp"] = "mlp"
    summary: ClassVar[str] = ("multi-layer perceptron with ReLU on flat (n, F) input (higher "
                              "ranks are flattened)")
    capabilities: ClassVar[ModelCapabilities] = ModelCapabilities(dp_sgd=True)
    hidden: Annotated[list[Width], Field(min_length=1, max_length=MAX_LAYERS)] | Width = Field(
        [64], description="mlp: hidden layer sizes.")
    dropout: float = Field(0.0, ge=0, lt=1, description="mlp: dropout after each hidden layer.")

    def options(self) -> dict[str, Any]:
        return {"hidden": _sizes(self.hidden), "dropout": self.dropout}


@register_model
class CnnOptions(ModelOptions):
    name: Literal["cnn"] = "cnn"
    summary: ClassVar[str] = ("2-D CNN for (n, C, H, W) images: conv + GroupNorm + ReLU + "
                              "max-pool blocks")
    capabilities: ClassVar[ModelCapabilities] = ModelCapabilities(
        dp_sgd=True, input="image (n, channels, height, width)")
    channels: list[Width] = Field([16, 32], min_length=1, max_length=MAX_LAYERS,
                                  description="cnn: output channels per conv block.")


@register_model
class ResnetOptions(ModelOptions):
    name: Literal["resnet"] = "resnet"
    summary: ClassVar[str] = ("small ResNet for (n, C, H, W) images: a conv stem, residual "
                              "stages of two-conv GroupNorm blocks (each stage after the first "
                              "halves the resolution), global average pool, linear head")
    capabilities: ClassVar[ModelCapabilities] = ModelCapabilities(
        dp_sgd=True, input="image (n, channels, height, width)")
    channels: list[Width] = Field([16, 32, 64], min_length=1, max_length=MAX_LAYERS,
                                  description="resnet: channels of each stage.")
    blocks: int = Field(1, ge=1, le=MAX_LAYERS,
                        description="resnet: residual blocks per stage.")


class _RecurrentOptions(ModelOptions):
    capabilities: ClassVar[ModelCapabilities] = ModelCapabilities(
        input="sequence (n, time, features)")
    hidden: Width | Annotated[list[Width], Field(min_length=1, max_length=1)] = Field(
        64, description="lstm/gru: hidden size (a list of one is accepted).")
    layers: int = Field(1, ge=1, le=MAX_LAYERS, description="lstm/gru: stacked layers.")
    dropout: float = Field(0.0, ge=0, lt=1,
                           description="lstm/gru: dropout between stacked layers.")

    def options(self) -> dict[str, Any]:
        hidden = self.hidden[0] if isinstance(self.hidden, list) else self.hidden
        return {"hidden": hidden, "layers": self.layers, "dropout": self.dropout}


@register_model
class LstmOptions(_RecurrentOptions):
    name: Literal["lstm"] = "lstm"
    summary: ClassVar[str] = "LSTM over (n, T, F) sequences, classifies from the last hidden state"


@register_model
class GruOptions(_RecurrentOptions):
    name: Literal["gru"] = "gru"
    summary: ClassVar[str] = "GRU over (n, T, F) sequences, classifies from the last hidden state"


@register_model
class TransformerOptions(ModelOptions):
    name: Literal["transformer"] = "transformer"
    summary: ClassVar[str] = ("transformer encoder; features (n, F) or time steps (n, T, F) "
                              "are tokens")
    capabilities: ClassVar[ModelCapabilities] = ModelCapabilities(
        input="tabular (n, features) or sequence (n, time, features)")
    d_model: int = Field(32, ge=4, le=MAX_WIDTH, description="transformer: token width.")
    heads: int = Field(4, ge=1, le=256,
                       description="transformer: attention heads (must divide d_model).")
    layers: int = Field(2, ge=1, le=MAX_LAYERS, description="transformer: encoder layers.")
    dropout: float = Field(0.0, ge=0, lt=1, description="transformer: dropout inside the encoder.")

    @model_validator(mode="after")
    def _check(self) -> TransformerOptions:
        if self.d_model % self.heads:
            raise ValueError(f"transformer heads={self.heads} must divide "
                             f"d_model={self.d_model}")
        return self


@register_model
class SgdLinearOptions(ModelOptions):
    name: Literal["sgd_linear"] = "sgd_linear"
    summary: ClassVar[str] = ("scikit-learn linear model trained by SGD (logistic loss, or "
                              "squared loss for regression)")
    capabilities: ClassVar[ModelCapabilities] = ModelCapabilities(backend="sklearn")


@register_model
class XGBoostOptions(TreeOptions, ModelOptions):
    """Gradient-boosted trees grown federatedly from the sites' histograms (XGBoost's
    algorithm, Chen & Guestrin 2016); the options are :class:`~fedcare.trees.TreeOptions`."""

    name: Literal["xgboost"] = "xgboost"
    summary: ClassVar[str] = ("gradient-boosted trees (XGBoost's algorithm) on flat (n, F) "
                              "input, missing values allowed, grown from the sites' "
                              "gradient/hessian histograms and saved as an XGBoost model")
    capabilities: ClassVar[ModelCapabilities] = ModelCapabilities(
        backend="trees", strategy="xgboost", no_dp=(
            "the sites' histograms are released exactly (optionally through secure "
            "aggregation); DP for trees would need noised histograms and split counts that "
            "fedcare does not implement - remove [privacy]"))

    def rounds(self) -> int:
        """One sketch round, then (at most) one round per level of every tree."""
        return 1 + self.n_trees * self.max_depth

    def tree_options(self) -> TreeOptions:
        return TreeOptions(**self.model_dump(exclude={"name"}))


#: Largest study module a custom model may ship (its text travels in the study, to every site).
MAX_CODE_BYTES = 256 * 1024
#: Largest flat parameter vector of a custom model.
MAX_CUSTOM_PARAMS = 2**24


@register_model
class CustomOptions(ModelOptions):
    """A model whose code the study ships: a Python module that fedcare never imports, run
    at each site only after approval and only in the sandbox
    (:mod:`fedcare.governance.sandbox`; the contract is in ``docs/governance.md``). Its text
    is embedded when the study file is read, so it travels with the study and is part of the
    content hash every site approves."""

    name: Literal["custom"] = "custom"
    summary: ClassVar[str] = ("the study's own Python module (fit/scores on numpy arrays), run "
                              "at each site in the sandbox after approval; its weights are "
                              "one flat float vector")
    capabilities: ClassVar[ModelCapabilities] = ModelCapabilities(
        backend="custom", site_half=False, optimizers=False)
    code: str | None = Field(None, min_length=1, max_length=1000, description=(
        "custom: the study's Python module, a path relative to the study file; its text "
        "(at most 256 KiB of UTF-8) is read into model.source when the study is read."))
    source: str | None = Field(None, min_length=1, max_length=MAX_CODE_BYTES, description=(
        "custom: the module's text (filled in from model.code; give one of the two)."))
    params: int = Field(1, ge=1, le=MAX_CUSTOM_PARAMS, description=(
        "custom: length of the model's flat float64 weight vector."))
    init_std: float = Field(0.0, ge=0, le=100, description=(
        "custom: initial weights drawn from N(0, init_std^2) with the study seed (0: zeros)."))
    cpu_seconds: int = Field(60, ge=1, le=3600, description=(
        "custom: CPU seconds one sandboxed run (one fit or one scoring) may use."))
    wall_seconds: float = Field(120.0, gt=0, le=7200, description=(
        "custom: wall-clock seconds one sandboxed run may take."))
    memory_mb: int = Field(2048, ge=256, le=65536, description=(
        "custom: address space (MiB) of one sandboxed run."))

    @model_validator(mode="after")
    def _one_source(self) -> CustomOptions:
        if self.code is None and self.source is None:
            raise ValueError("model 'custom' needs model.code (the path of the study's "
                             "Python module, relative to the study file)")
        if self.source is not None and len(self.source.encode("utf-8")) > MAX_CODE_BYTES:
            raise ValueError(f"model.source is larger than {MAX_CODE_BYTES} bytes")
        return self

    def resolved(self, base: Path) -> CustomOptions:
        if self.source is not None or self.code is None:
            return self
        path = base / self.code
        try:
            size = path.stat().st_size
            if size > MAX_CODE_BYTES:
                raise ConfigError(f"'model.code': {path} is {size} bytes; a study's module may "
                                  f"be at most {MAX_CODE_BYTES} bytes (256 KiB)")
            text = path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            raise ConfigError(f"'model.code': {path} does not exist; give the path of the "
                              "study's Python module relative to the study file") from None
        except UnicodeDecodeError:
            raise ConfigError(f"'model.code': {path} is not UTF-8 text") from None
        except OSError as exc:
            raise ConfigError(f"'model.code': cannot read {path}: {exc.strerror}") from None
        if not text.strip():
            raise ConfigError(f"'model.code': {path} is empty")
        return self.model_copy(update={"source": text})

    def unresolved(self) -> str | None:
        if self.source is None:
            return (f"'model.code': the module {self.code!r} was not read; load the study "
                    "from its file (fedcare reads the module next to it) or give model.source")
        return None


def check_bins_vs_rows(model: TreeOptions | ModelOptions, rows: int, site: str) -> str | None:
    """Why a site's training rows are too few for the model's bins (None: they are not)."""
    if not isinstance(model, TreeOptions):
        return None
    try:
        tree_rows_check(model, rows, site=site)
    except ConfigError:
        return (f"'model.max_bin' = {model.max_bin} is more bins than site {site!r}'s {rows} "
                f"training rows; use a value in [2, {max(rows, 2)}]")
    return None
