"""The saved model: weights plus everything needed to apply them to a new patient.

A run's ``model.safetensors`` is a *model bundle*: an ordinary safetensors file whose tensors
are the model's weights under their own names (any safetensors reader loads them as plain
weights), with one more metadata entry, ``fedcare_model``, holding a JSON header:

```json
{"format": "fedcare-model", "format_version": 1, "fedcare_version": "0.1.0",
 "study": {"name": "...", "content_hash": "<64 hex>", "study_id": null, "rounds": 20},
 "task": "binary",
 "features": ["age", "sbp", ...],
 "label": {"column": "outcome", "classes": [0, 1], "positive": 1},
 "preprocessing": [{"step": "standardize", "shape": [30], "mean": [...], "std": [...]}],
 "model": {"name": "mlp", "backend": "torch", "options": {"hidden": [64], "dropout": 0.0},
           "input_shape": [30], "num_outputs": 1}}
```

* ``features``: the columns a new table must have, in the order the model reads them.
* ``label.classes[i]`` is the label value of class index ``i``; for a binary task the model's
  one logit is the log-odds of ``positive`` (= ``classes[1]``). Empty for regression.
* ``preprocessing``: the steps applied to the raw features before the model, in order; today
  only ``standardize`` (``(x - mean) / std`` with the federation's mean and std, as every site
  applied them in training). A bundle with a step this version does not know is refused.
* ``model``: the model's name and validated options, input shape and output width: what
  :func:`fedcare.engine.learner_factory.learner_for` needs to rebuild it.
* ``study.content_hash``: the study definition the model was trained under (what the sites
  approved).

Why one file and not a folder: the bundle is copied, attached to MLflow runs and mailed to a
hospital's IT; weights and the facts that give them meaning must not be separated. A reader
refuses a ``format_version`` newer than its own rather than guessing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedcare.core.dataset import TaskType
from fedcare.core.errors import FedcareError, ValidationError
from fedcare.core.params import Parameters
from fedcare.core.wire import load_parameters, save_parameters

#: The metadata key of the JSON header, the format's name and the version this code writes.
METADATA_KEY = "fedcare_model"
FORMAT = "fedcare-model"
FORMAT_VERSION = 1
#: Preprocessing steps this version applies (a newer bundle may use others: refused).
KNOWN_STEPS = ("standardize",)


class BundleError(FedcareError):
    """A model file cannot be used: not a bundle, unreadable, or from a newer fedcare."""


@dataclass(frozen=True)
class ModelBundle:
    """A saved model and what gives its weights meaning (see the module docstring)."""

    parameters: Parameters
    task: TaskType
    features: tuple[str, ...]
    model_name: str
    model_options: Mapping[str, Any]
    input_shape: tuple[int, ...]
    num_outputs: int
    backend: str = "torch"
    classes: tuple[Any, ...] = ()
    label_column: str | None = None
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    study: str = ""
    content_hash: str = ""
    study_id: str | None = None
    rounds: int = 0
    fedcare_version: str = ""

    def __post_init__(self) -> None:
        if self.task is not TaskType.REGRESSION:
            need = 2 if self.task is TaskType.BINARY else self.num_outputs
            if len(self.classes) != need:
                raise ValidationError(f"a {self.task.value} model needs {need} class values, "
                                      f"got {len(self.classes)}")
        if (self.features and len(self.input_shape) == 1
                and len(self.features) != self.input_shape[0]):
            raise ValidationError(f"{len(self.features)} feature names for inputs shaped "
                                  f"{self.input_shape}")
        if (self.mean is None) != (self.std is None):
            raise ValidationError("standardization needs both mean and std")
        if self.mean is not None and self.std is not None:
            if self.mean.shape != tuple(self.input_shape) or self.std.shape != self.mean.shape:
                raise ValidationError(f"standardization shaped {self.mean.shape} does not fit "
                                      f"inputs shaped {self.input_shape}")
            if not (np.isfinite(self.mean).all() and np.isfinite(self.std).all()
                    and (self.std > 0).all()):
                raise ValidationError("standardization must be finite with std > 0")

    @property
    def positive(self) -> Any:
        """The label value whose probability a binary model gives (``classes[1]``)."""
        return self.classes[1] if self.task is TaskType.BINARY else None

    @property
    def tabular(self) -> bool:
        """Whether rows are a table's columns (``features``), not images or sequences."""
        return len(self.input_shape) == 1 and len(self.features) == self.input_shape[0]

    # -- the file ---------------------------------------------------------------------------
    def header(self) -> dict[str, Any]:
        steps: list[dict[str, Any]] = []
        if self.mean is not None and self.std is not None:
            steps.append({"step": "standardize", "shape": list(self.mean.shape),
                          "mean": _floats(self.mean), "std": _floats(self.std)})
        label: dict[str, Any] = {"column": self.label_column, "classes": list(self.classes)}
        if self.task is TaskType.BINARY:
            label["positive"] = self.positive
        return {"format": FORMAT, "format_version": FORMAT_VERSION,
                "fedcare_version": self.fedcare_version,
                "study": {"name": self.study, "content_hash": self.content_hash,
                          "study_id": self.study_id, "rounds": self.rounds},
                "task": self.task.value, "features": list(self.features), "label": label,
                "preprocessing": steps,
                "model": {"name": self.model_name, "backend": self.backend,
                          "options": dict(self.model_options),
                          "input_shape": list(self.input_shape),
                          "num_outputs": self.num_outputs}}

    def to_bytes(self) -> bytes:
        """The bundle as safetensors bytes (weights as tensors, the header in the metadata).
        The plain ``study``/``config_hash``/``rounds`` entries are kept for older readers."""
        meta = {METADATA_KEY: json.dumps(self.header(), separators=(",", ":")),
                "study": self.study, "config_hash": self.content_hash,
                "rounds": str(self.rounds)}
        if self.study_id is not None:
            meta["study_id"] = self.study_id
        return save_parameters(self.parameters, metadata=meta)

    @classmethod
    def from_bytes(cls, raw: bytes, *, source: str = "model file") -> ModelBundle:
        """Read a bundle; a file without the header (weights only) or a newer format is a
        :class:`BundleError` that says what to do."""
        try:
            stored = load_parameters(raw)
        except ValidationError as exc:
            raise BundleError(f"{source} is not a readable safetensors model: {exc}") from exc
        text = stored.metadata.get(METADATA_KEY)
        if text is None:
            raise BundleError(f"{source} holds weights only (no {METADATA_KEY!r} header): it "
                              "was written by an older fedcare; run the study again to get a "
                              "model bundle")
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise BundleError(f"{source}: the model header is not valid JSON") from exc
        return cls.from_header(doc, stored.parameters, source=source)

    @classmethod
    def from_header(cls, doc: Any, parameters: Parameters, *,
                    source: str = "model file") -> ModelBundle:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise BundleError(f"{source} is not a fedcare model bundle")
        version = doc.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise BundleError(f"{source}: bad format_version {version!r}")
        if version > FORMAT_VERSION:
            raise BundleError(f"{source} is a model bundle of format version {version}, newer "
                              f"than this fedcare reads ({FORMAT_VERSION}); upgrade fedcare "
                              f"(it was written by fedcare {doc.get('fedcare_version', '?')})")
        try:
            return cls._parse(doc, parameters, source)
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{source}: the model header is malformed ({exc!r})") from exc

    @classmethod
    def _parse(cls, doc: dict[str, Any], parameters: Parameters, source: str) -> ModelBundle:
        mean = std = None
        for step in doc["preprocessing"]:
            name = step.get("step")
            if name not in KNOWN_STEPS:
                raise BundleError(f"{source} needs preprocessing step {name!r}, which this "
                                  f"fedcare does not know ({', '.join(KNOWN_STEPS)}); upgrade "
                                  "fedcare")
            shape = tuple(int(d) for d in step["shape"])
            mean = np.asarray(step["mean"], dtype=np.float32).reshape(shape)
            std = np.asarray(step["std"], dtype=np.float32).reshape(shape)
        model, label, study = doc["model"], doc["label"], doc["study"]
        try:
            return cls(parameters=parameters, task=TaskType(doc["task"]),
                       features=tuple(str(f) for f in doc["features"]),
                       model_name=str(model["name"]), model_options=dict(model["options"]),
                       input_shape=tuple(int(d) for d in model["input_shape"]),
                       num_outputs=int(model["num_outputs"]),
                       backend=str(model.get("backend", "torch")),
                       classes=tuple(label["classes"] or ()), label_column=label.get("column"),
                       mean=mean, std=std, study=str(study.get("name", "")),
                       content_hash=str(study.get("content_hash", "")),
                       study_id=study.get("study_id"), rounds=int(study.get("rounds", 0)),
                       fedcare_version=str(doc.get("fedcare_version", "")))
        except ValidationError as exc:
            raise BundleError(f"{source}: {exc.message}") from exc


def _floats(a: np.ndarray) -> list[float]:
    """float32 values as JSON numbers: the shortest repr that reads back to the same float32
    (``float(np.float32)`` would print the float64 expansion, 17 digits each)."""
    return [float(str(v)) for v in np.asarray(a, dtype=np.float32).reshape(-1)]


def study_bundle(cfg: Any, *, parameters: Parameters, content_hash: str, task: TaskType,
                 input_shape: Sequence[int], num_outputs: int, features: Sequence[str],
                 classes: Sequence[Any], label_column: str | None,
                 normalizer: Mapping[str, Any] | None, rounds: int,
                 study_id: str | None = None) -> ModelBundle:
    """The bundle of a finished study (simulation and hub alike): ``cfg`` is its
    :class:`~fedcare.config.StudyConfig`; ``normalizer`` the ``mean``/``std`` every site's
    features were scaled by (None: not standardized)."""
    mean = std = None
    if normalizer is not None:
        mean = np.asarray(normalizer["mean"], dtype=np.float32).reshape(tuple(input_shape))
        std = np.asarray(normalizer["std"], dtype=np.float32).reshape(tuple(input_shape))
    return ModelBundle(parameters=parameters, task=task, features=tuple(features),
                       model_name=cfg.model.name, model_options=cfg.model.options(),
                       backend=cfg.model.capabilities.backend,
                       input_shape=tuple(int(d) for d in input_shape),
                       num_outputs=int(num_outputs),
                       classes=tuple(_plain(c) for c in classes) if task is not
                       TaskType.REGRESSION else (),
                       label_column=label_column, mean=mean, std=std, study=cfg.study.name,
                       content_hash=content_hash, study_id=study_id, rounds=rounds,
                       fedcare_version=_version())


def model_columns(data: Any, normalizer: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The columns the model takes: the study's features, or - when it imputes missing
    values or one-hot encodes categories - the encoded columns (``sex=F``, ...), which the
    sites built with the federation's fill values and level list. Applying such a model to
    raw rows needs that encoding first; the bundle names the encoded columns, so a raw table
    is refused by column name rather than mis-read."""
    from fedcare.data.prepare import Columns, array_text

    features = tuple(getattr(data, "features", ()) or ())
    cols = Columns.of(data, features)
    if not cols.active:
        return features
    raw = (normalizer or {}).get("levels")
    levels = array_text(np.asarray(raw)) if raw is not None else {}
    return cols.encoded_names(levels if isinstance(levels, dict) else {})


def networked_bundle(study_id: str, history: Any, final: Parameters) -> ModelBundle:
    """The bundle of a networked study, from what the hub knows: the approved configuration
    (features, label, task, classes: class ids are the label values in a networked study)
    and the federation's standardization learned in the stats step
    (``history.meta["normalizer"]``)."""
    from fedcare.config import FederatedData, parse_config
    from fedcare.engine.learner_factory import ModelShape

    meta = history.meta
    cfg = parse_config(meta["config"])
    data = cfg.data
    if not isinstance(data, FederatedData):  # pragma: no cover - the hub runs only these
        raise BundleError("a networked study's data source must be 'federation'")
    shape = ModelShape.of_federated(data)
    return study_bundle(cfg, parameters=final, content_hash=str(meta.get("config_hash", "")),
                        task=shape.task, input_shape=shape.input_shape,
                        num_outputs=shape.num_outputs,
                        features=model_columns(data, meta.get("normalizer")),
                        classes=tuple(range(shape.num_classes)), label_column=data.label,
                        normalizer=meta.get("normalizer"), rounds=len(history.rounds),
                        study_id=study_id)


def _version() -> str:
    """fedcare's version (from the installed package: the engine does not import the
    ``fedcare`` package itself, which sits above every layer)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedcare")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return ""


def _plain(value: Any) -> Any:
    """A label value as JSON keeps it (numpy scalars become Python ones)."""
    return value.item() if isinstance(value, np.generic) else value


def read_bundle(path: str | Path) -> ModelBundle:
    p = Path(path)
    if p.is_dir():
        p = p / "model.safetensors"  # a run folder
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read model {p}: {exc.strerror or exc}") from exc
    return ModelBundle.from_bytes(raw, source=str(p))
