"""Apply a saved model bundle to new patients, and export it to ONNX.

:class:`SavedModel` (what :func:`fedcare.load_model` returns) checks a new table against the
bundle - every feature column present, numeric and finite; extra columns ignored - puts the
columns in the model's order, applies the bundled standardization exactly as the sites did in
training (float32), and turns the model's outputs into probabilities, classes and values:

* binary: ``P(positive)`` is the sigmoid of the one logit; ``predict_proba`` gives
  ``[1 - p, p]`` in the order of ``classes``;
* multiclass: softmax of the logits (for ``sgd_linear``, scikit-learn's normalised
  one-vs-rest probabilities);
* regression: the value.

:func:`export_onnx` writes one ONNX graph that takes the *raw* features (float32, the bundle's
column order) and does all of the above: standardization, model, probabilities. A hospital's
system then needs onnxruntime only.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedcare.core.dataset import TaskType
from fedcare.core.errors import DataError
from fedcare.core.learning import Learner
from fedcare.engine.bundle import BundleError, ModelBundle, read_bundle

if TYPE_CHECKING:
    import pandas as pd

#: ONNX opset the export targets (onnxruntime >= 1.17 runs it).
ONNX_OPSET = 17


class SavedModel:
    """A model bundle ready to predict; see the module docstring."""

    def __init__(self, bundle: ModelBundle) -> None:
        from fedcare.engine.learner_factory import ModelShape, learner_for
        from fedcare.learners.options import model_options

        self.bundle = bundle
        try:
            options = model_options(bundle.model_name, dict(bundle.model_options))
        except Exception as exc:  # ConfigError: an unknown model or options
            raise BundleError(f"the bundle's model cannot be rebuilt: {exc}") from exc
        classes = (len(bundle.classes) if bundle.task is not TaskType.REGRESSION else 0)
        shape = ModelShape(bundle.input_shape, bundle.task, classes)
        if shape.num_outputs != bundle.num_outputs:
            raise BundleError(f"the bundle's model has {bundle.num_outputs} outputs but a "
                              f"{bundle.task.value} task with {classes} classes needs "
                              f"{shape.num_outputs}")
        _check_layout(bundle, options)  # before building: a header must not size the model
        self._learner: Learner = learner_for(options, shape)
        spec = self._learner.initial_parameters().spec
        if bundle.parameters.spec != spec:
            raise BundleError(f"the bundle's weights do not fit model {bundle.model_name!r} "
                              f"with its options and input shape {bundle.input_shape}")

    @property
    def features(self) -> tuple[str, ...]:
        return self.bundle.features

    @property
    def classes(self) -> tuple[Any, ...]:
        return self.bundle.classes

    @property
    def task(self) -> TaskType:
        return self.bundle.task

    # -- inputs -------------------------------------------------------------------------------
    def matrix(self, data: pd.DataFrame | np.ndarray, *, source: str = "the table") -> np.ndarray:
        """Raw features as float32 in the model's column order, validated (DataError)."""
        import pandas as pd

        b = self.bundle
        if isinstance(data, pd.DataFrame):
            if not b.tabular:
                raise DataError(f"this {b.model_name} model takes inputs shaped "
                                f"{b.input_shape}, not a table's columns; give it a numpy "
                                "array (fedcare.load_model(...).predict(array))")
            columns = [str(c) for c in data.columns]
            missing = [f for f in b.features if f not in columns]
            if missing:
                raise DataError(f"{source} lacks feature column(s) {missing} that the model "
                                f"needs (`fedcare model show` lists all {len(b.features)})")
            frame = data.set_axis(columns, axis=1)[list(b.features)]
            numbers = {f: _numeric(frame[f]) for f in b.features}
            bad = [f for f, col in numbers.items() if col is None]
            if bad:
                raise DataError(f"feature column(s) {bad} of {source} are not numeric (a cell "
                                "holds text); the model takes numbers, coded as in training")
            x = np.stack([np.asarray(numbers[f], dtype=np.float64) for f in b.features],
                         axis=1).astype(np.float32) if len(frame) else np.zeros(
                (0, len(b.features)), np.float32)
            names: Sequence[str] = b.features
        else:
            x = np.asarray(data, dtype=np.float32)
            if x.shape[1:] != b.input_shape:
                raise DataError(f"the model takes rows shaped {b.input_shape}, got "
                                f"{x.shape[1:]}")
            names = b.features if b.tabular else ()
        finite = np.isfinite(x)
        if b.backend == "trees":  # trees send a missing value its learned default direction
            finite |= np.isnan(x)
        if not finite.all():
            rows = int((~finite).reshape(len(x), -1).any(axis=1).sum())
            ok_columns = [bool(v) for v in np.all(finite.reshape(len(x), -1), axis=0)]
            where = ([n for n, ok in zip(names, ok_columns, strict=True) if not ok]
                     if names else "some positions")
            raise DataError(f"{rows} row(s) of {source} have missing or non-finite values in "
                            f"{where}; impute or drop them first")
        return np.ascontiguousarray(x)

    def _standardized(self, x: np.ndarray) -> np.ndarray:
        b = self.bundle
        if b.mean is None or b.std is None:
            return x
        from fedcare.data.standardize import apply_standardizer

        return apply_standardizer(x, b.mean, b.std)

    # -- outputs ------------------------------------------------------------------------------
    def scores(self, data: pd.DataFrame | np.ndarray) -> np.ndarray:
        """The model's raw outputs (logits, or values for regression), (n, outputs)."""
        x = self._standardized(self.matrix(data))
        if len(x) == 0:
            return np.zeros((0, self.bundle.num_outputs))
        return self._learner.scores(self.bundle.parameters, x)

    def predict_proba(self, data: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Class probabilities (n, classes), columns in the order of :attr:`classes`."""
        if self.task is TaskType.REGRESSION:
            raise DataError("a regression model gives values, not probabilities; use predict")
        return probabilities(self.task, self.scores(data))

    def predict(self, data: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Predicted label values (classification: the most probable class, as the label
        was coded in training) or values (regression)."""
        if self.task is TaskType.REGRESSION:
            return self.scores(data)[:, 0]
        idx = np.argmax(self.predict_proba(data), axis=1)
        return np.asarray(self.classes, dtype=object)[idx]

    def predictions(self, data: pd.DataFrame, *, id_column: str | None = None,
                    source: str = "the table") -> pd.DataFrame:
        """A table of predictions: the id column (if named), then ``probability_<class>`` per
        class and ``prediction`` (regression: ``prediction`` only)."""
        import pandas as pd

        out = pd.DataFrame(index=range(len(data)))
        if id_column is not None:
            if id_column not in [str(c) for c in data.columns]:
                raise DataError(f"id column {id_column!r} is not in {source}")
            out[id_column] = data[id_column].to_numpy()
        x = self.matrix(data, source=source)
        if self.task is TaskType.REGRESSION:
            out["prediction"] = self._learner.scores(self.bundle.parameters,
                                                     self._standardized(x))[:, 0]
            return out
        proba = self.predict_proba(x)
        for j, c in enumerate(self.classes):
            out[f"probability_{c}"] = proba[:, j]
        out["prediction"] = np.asarray(self.classes, dtype=object)[np.argmax(proba, axis=1)]
        return out


def _check_layout(bundle: ModelBundle, options: Any) -> None:
    """Refuse a header whose model would not have the bundle's weights, *before* allocating
    it: a tampered header (``input_shape = [10**9]``) would otherwise make loading a model
    allocate whatever it names. The torch model is built on PyTorch's ``meta`` device (shapes
    only, no memory); the linear model's one matrix is checked directly."""
    shapes = {k: tuple(v.shape) for k, v in bundle.parameters.items()}
    if bundle.backend == "trees":
        from fedcare.trees.rounds import state_shapes

        fits = (len(bundle.input_shape) == 1
                and shapes == state_shapes(options, bundle.input_shape[0]))
    elif bundle.backend == "custom":  # the study's own code: one flat weight vector
        fits = shapes == {"params": (int(getattr(options, "params", -1)),)}
    elif bundle.backend == "sklearn":
        coef = shapes.get("coef", ())
        fits = (len(bundle.input_shape) == 1
                and int(np.prod(coef)) == bundle.input_shape[0] * bundle.num_outputs)
    else:
        import torch

        from fedcare.learners.models import build_model

        with torch.device("meta"):
            model = build_model(bundle.model_name, bundle.input_shape, bundle.num_outputs,
                                options, 0)
        wanted = {k: tuple(v.shape) for k, v in model.state_dict().items()
                  if v.is_floating_point()}
        fits = wanted == shapes
    if not fits:
        raise BundleError(f"the bundle's weights do not fit model {bundle.model_name!r} with "
                          f"its options and input shape {bundle.input_shape}")


def _numeric(col: pd.Series) -> np.ndarray | None:
    """A column's values as float64 (missing as NaN); None if a cell is not a number. Text
    columns whose cells all read as numbers (a frame built from strings) are accepted."""
    import pandas as pd

    if pd.api.types.is_complex_dtype(col):
        return None
    if pd.api.types.is_numeric_dtype(col):
        return col.to_numpy(dtype=np.float64, na_value=np.nan)
    values = pd.to_numeric(col, errors="coerce")
    if (values.isna() & col.notna()).any():
        return None
    return values.to_numpy(dtype=np.float64, na_value=np.nan)


def probabilities(task: TaskType, logits: np.ndarray) -> np.ndarray:
    """Class probabilities from a model's logits (see the module docstring)."""
    z = np.asarray(logits, dtype=np.float64)
    if task is TaskType.BINARY:
        p = 1.0 / (1.0 + np.exp(-z[:, 0]))
        return np.stack([1.0 - p, p], axis=1)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def read_table(path: str | Path) -> pd.DataFrame:
    """New patients' table (CSV, optionally gzipped, or Parquet); DataError if unreadable."""
    import zlib

    import pandas as pd
    import pyarrow as pa

    p = Path(path)
    name = p.name.lower()
    if not p.is_file():
        raise DataError(f"table {p} does not exist (or is not a file)")
    if not name.endswith((".csv", ".csv.gz", ".parquet", ".pq")):
        raise DataError(f"cannot tell the format of {p} from its name; use .csv, .csv.gz or "
                        ".parquet")
    try:
        return pd.read_parquet(p) if name.endswith((".parquet", ".pq")) else pd.read_csv(p)
    except pd.errors.EmptyDataError:
        raise DataError(f"{p} is empty (no header)") from None
    except (OSError, ValueError, EOFError, zlib.error, pa.ArrowException) as exc:
        raise DataError(f"cannot read {p} ({type(exc).__name__}): corrupt, or not in the "
                        "format its name says") from exc


def load_model(path: str | Path) -> SavedModel:
    """The model bundle at ``path`` (a ``model.safetensors``, or a run folder holding one)."""
    return SavedModel(read_bundle(path))


# -- ONNX -------------------------------------------------------------------------------------
def export_onnx(model: SavedModel, path: str | Path) -> None:
    """Write ``model`` as one ONNX graph: input ``features`` (n, F) float32 raw values in the
    bundle's column order; output ``probabilities`` (n, classes) or ``prediction`` (n, 1).

    The graph is traced by PyTorch's TorchScript-based exporter (``dynamo=False``: it needs
    no onnxscript and handles every zoo model's layers); the bundle's header is copied into
    the ONNX file's metadata (``fedcare_model``) so the file stays self-describing."""
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - onnx is a dependency
        raise BundleError("ONNX export needs the onnx package (pip install onnx)") from exc
    import json
    import warnings

    import torch

    from fedcare.engine.bundle import METADATA_KEY

    b = model.bundle
    if b.backend == "custom":
        raise BundleError(f"model {b.model_name!r} is the study's own code, which runs only in "
                          "fedcare's sandbox; it cannot be exported to ONNX (predict with "
                          "`fedcare predict`, which runs it in the sandbox)")
    module = _graph(model)
    dummy = torch.zeros((1, *b.input_shape), dtype=torch.float32)
    output = "prediction" if b.task is TaskType.REGRESSION else "probabilities"
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
        traced = Path(tmp) / "model.onnx"
        torch.onnx.export(module, (dummy,), str(traced), dynamo=False,
                          opset_version=ONNX_OPSET, input_names=["features"],
                          output_names=[output],
                          dynamic_axes={"features": {0: "rows"}, output: {0: "rows"}})
        proto = onnx.load(str(traced))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(b.header(), separators=(",", ":"))
    onnx.checker.check_model(proto)
    from fedcare.core.files import atomic_write

    atomic_write(Path(path), proto.SerializeToString())


def _graph(model: SavedModel) -> Any:
    """A torch module: raw features -> standardize -> model -> probabilities (or value)."""
    import torch
    from torch import nn

    b = model.bundle
    if b.backend == "sklearn":
        core: nn.Module = _linear(b)
    else:
        learner: Any = model._learner
        learner.scores(b.parameters, np.zeros((1, *b.input_shape), np.float32))  # loads weights
        core = learner.model
    mean = torch.from_numpy(b.mean) if b.mean is not None else None
    std = torch.from_numpy(b.std) if b.std is not None else None
    task, ovr = b.task, b.backend == "sklearn"

    class Graph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.core = core

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if mean is not None and std is not None:
                x = (x - mean) / std
            z = self.core(x)
            if task is TaskType.BINARY:
                p = torch.sigmoid(z)
                return torch.cat([1 - p, p], dim=1)
            if task is TaskType.MULTICLASS:
                if ovr:  # scikit-learn's one-vs-rest probabilities, normalised
                    s = torch.sigmoid(z)
                    return s / s.sum(dim=1, keepdim=True)
                return torch.softmax(z, dim=1)
            return z

    return Graph().eval()


def _linear(b: ModelBundle) -> Any:
    """The ``sgd_linear`` model's decision function as a torch ``Linear`` (float32)."""
    import torch
    from torch import nn

    coef = np.atleast_2d(np.asarray(b.parameters["coef"], dtype=np.float32))
    intercept = np.asarray(b.parameters["intercept"], dtype=np.float32).reshape(-1)
    layer = nn.Linear(coef.shape[1], coef.shape[0])
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(coef))
        layer.bias.copy_(torch.from_numpy(intercept))
    return layer
