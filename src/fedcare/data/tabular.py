"""Read one site's table (CSV or Parquet) and check that the sites agree with each other.

Every problem a hospital's extract can have is reported as a :class:`DataError` that names the
site, the file and the problem and says what to change, *before* any training starts. Messages
name columns and count rows but never quote cell values: an error message may leave the site
(logs, the hub's dashboard), and patient data must not.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from fedcare.core.dataset import TaskType
from fedcare.core.errors import DataError
from fedcare.data.table import Table

_CSV_SUFFIXES = (".csv", ".csv.gz")
_PARQUET_SUFFIXES = (".parquet", ".pq")

# Float labels with more distinct values than this are a regression target; fewer, they are
# class codes stored as floats (e.g. 0.0 / 1.0 from a Parquet export).
MAX_FLOAT_CLASSES = 20


def load_table(path: str | Path, *, label: str, features: Sequence[str] | None,
               site: str) -> Table:
    """Read ``path`` and return float32 features and the *raw* label column.

    ``features=None`` means every column except ``label``, in file order. Labels stay raw so
    that :func:`encode_labels` can give every site the same class ids.
    """
    p = Path(path)
    frame = _read_frame(p, site)
    columns = [str(c) for c in frame.columns]
    frame.columns = pd.Index(columns)
    if label not in columns:
        raise DataError(f"label column {label!r} is not in {p}; its columns are "
                        f"{_short_list(columns)}. Fix data.label or the file's header.", site=site)
    names = _select_features(columns, label, features, p, site)
    if len(frame) == 0:
        raise DataError(f"{p} has a header but zero rows; export the site's data again.",
                        site=site)
    x = _feature_matrix(frame, names, p, site)
    y = _label_vector(frame[label], label, p, site)
    return Table(x=x, y=y, feature_names=tuple(names))


def _read_frame(p: Path, site: str) -> pd.DataFrame:
    if not p.is_file():
        raise DataError(f"data file {p} does not exist (or is not a file); check the path "
                        "configured for this site.", site=site)
    lower = p.name.lower()
    if not lower.endswith(_CSV_SUFFIXES + _PARQUET_SUFFIXES):
        raise DataError(f"cannot tell the format of {p} from its name; use a CSV "
                        f"({', '.join(_CSV_SUFFIXES)}) or Parquet "
                        f"({', '.join(_PARQUET_SUFFIXES)}) file.", site=site)
    try:
        if lower.endswith(_PARQUET_SUFFIXES):
            return pd.read_parquet(p)
        return pd.read_csv(p)
    except pd.errors.EmptyDataError:
        raise DataError(f"{p} is empty (no header, no rows); export the site's data again.",
                        site=site) from None
    except (OSError, ValueError, EOFError, zlib.error, pa.ArrowException) as exc:
        raise DataError(f"cannot read {p} ({type(exc).__name__}); the file is corrupt or not in "
                        "the format its name says. Export it again.", site=site) from exc


def _select_features(columns: list[str], label: str, features: Sequence[str] | None, p: Path,
                     site: str) -> list[str]:
    if features is None:
        names = [c for c in columns if c != label]
    else:
        names = [str(f) for f in features]
        dupes = sorted({f for f in names if names.count(f) > 1})
        if dupes:
            raise DataError(f"features list names {dupes} more than once; list each column once.",
                            site=site)
        if label in names:
            raise DataError(f"label column {label!r} is also listed as a feature; remove it "
                            "from data.features (the model would see the answer).", site=site)
        missing = [f for f in names if f not in columns]
        if missing:
            raise DataError(f"feature column(s) {missing} are not in {p}; its columns are "
                            f"{_short_list(columns)}. Fix data.features or the file's header.",
                            site=site)
    if not names:
        raise DataError(f"{p} has no feature columns besides the label {label!r}.", site=site)
    return names


def _feature_matrix(frame: pd.DataFrame, names: list[str], p: Path, site: str) -> np.ndarray:
    bad = [n for n in names
           if not pd.api.types.is_numeric_dtype(frame[n]) or
           pd.api.types.is_complex_dtype(frame[n])]
    if bad:
        raise DataError(f"feature column(s) {bad} in {p} are not numeric; encode them as numbers "
                        "(e.g. one-hot) or drop them from data.features.", site=site)
    x = frame[names].to_numpy(dtype=np.float64, na_value=np.nan).astype(np.float32)
    finite = np.isfinite(x)
    if not finite.all():
        bad_rows = int((~finite).any(axis=1).sum())
        bad_cols = [n for n, ok in zip(names, finite.all(axis=0), strict=True) if not ok]
        raise DataError(f"{bad_rows} row(s) of {p} have missing (NaN) or infinite feature values "
                        f"(or values too large for float32), in column(s) {bad_cols}; impute "
                        "or drop those rows before training.", site=site)
    return np.ascontiguousarray(x)


def _label_vector(col: pd.Series, label: str, p: Path, site: str) -> np.ndarray:
    n_missing = int(col.isna().sum())
    if n_missing:
        raise DataError(f"label column {label!r} of {p} is missing in {n_missing} row(s); drop "
                        "those rows (unlabelled rows cannot be trained or evaluated on).",
                        site=site)
    if isinstance(col.dtype, pd.api.extensions.ExtensionDtype) and hasattr(
            col.dtype, "numpy_dtype"):
        return col.to_numpy(dtype=col.dtype.numpy_dtype)
    return col.to_numpy()


def _short_list(items: Sequence[str], limit: int = 30) -> str:
    head = ", ".join(repr(i) for i in items[:limit])
    return f"[{head}{f', ... ({len(items) - limit} more)' if len(items) > limit else ''}]"


def encode_labels(per_site_labels: Mapping[str, np.ndarray],
                  ) -> tuple[dict[str, np.ndarray], tuple[object, ...]]:
    """Map raw labels to int64 class ids with ONE sorted vocabulary built across all sites.

    Each site encoding only its own labels would let "yes" be class 1 at one hospital and class
    0 at another whenever a site lacks a class. Class id ``i`` is ``vocabulary[i]``.
    """
    if not per_site_labels:
        raise DataError("no sites given to encode labels for")
    kinds = {site: _label_kind(np.asarray(y), site) for site, y in per_site_labels.items()}
    if len(set(kinds.values())) > 1:
        detail = ", ".join(f"{s}: {k}" for s, k in kinds.items())
        raise DataError(f"label types differ between sites ({detail}); export the label column "
                        "with the same coding at every site.")
    values = [_normalised(np.asarray(y)) for y in per_site_labels.values()]
    vocab = np.unique(np.concatenate(values))
    encoded = {site: np.searchsorted(vocab, v).astype(np.int64)
               for site, v in zip(per_site_labels, values, strict=True)}
    return encoded, tuple(v.item() if isinstance(v, np.generic) else v for v in vocab)


def _label_kind(y: np.ndarray, site: str) -> str:
    """'bool', 'number' or 'text': the kinds that sort consistently among themselves."""
    if y.ndim != 1:
        raise DataError(f"labels must be one value per row, got shape {y.shape}", site=site)
    if y.dtype.kind == "b":
        return "bool"
    if y.dtype.kind in "iuf":
        if y.dtype.kind == "f" and np.isnan(y).any():
            raise DataError("labels contain NaN; drop unlabelled rows", site=site)
        return "number"
    if y.dtype.kind in "US":
        return "text"
    if y.dtype.kind == "O":
        kinds = {"text" if isinstance(v, str) else "bool" if isinstance(v, (bool, np.bool_))
                 else "number" if isinstance(v, (int, float, np.integer, np.floating))
                 else type(v).__name__ for v in y}
        if len(kinds) == 1:
            return kinds.pop()
        if not kinds:
            return "text"
        raise DataError(f"labels mix types {sorted(kinds)}; use one coding for the label",
                        site=site)
    raise DataError(f"labels have unsupported dtype {y.dtype}", site=site)


def _normalised(y: np.ndarray) -> np.ndarray:
    """Give every site's labels of one kind a common dtype so they can be concatenated."""
    if y.dtype.kind == "O" and len(y) and isinstance(y[0], str):
        return y.astype(str)
    if y.dtype.kind in "iu":
        return y.astype(np.int64) if y.dtype.kind == "i" or y.max(initial=0) < 2**63 else y
    return y


def check_same_features(tables: Mapping[str, Table]) -> None:
    """Refuse to federate sites whose feature columns differ in name or order.

    A federated model's weight ``j`` means "column ``j``" at every site; a reordered export
    would train silently on the wrong columns.
    """
    items = list(tables.items())
    if not items:
        return
    ref_site, ref = items[0]
    for site, table in items[1:]:
        if table.feature_names == ref.feature_names:
            continue
        ref_set, other = set(ref.feature_names), set(table.feature_names)
        only_ref = [f for f in ref.feature_names if f not in other]
        only_other = [f for f in table.feature_names if f not in ref_set]
        if only_ref or only_other:
            detail = (f"only at {ref_site}: {_short_list(only_ref)}; "
                      f"only at {site}: {_short_list(only_other)}")
        else:
            moved = [a for a, b in zip(ref.feature_names, table.feature_names, strict=True)
                     if a != b]
            detail = f"same columns in a different order (columns out of place: {moved})"
        raise DataError(f"features of site {site!r} differ from site {ref_site!r}: {detail}. "
                        "Export the same columns, in the same order, at every site "
                        "(or list them in data.features).", site=site)


def infer_task(y_all: np.ndarray) -> tuple[TaskType, int]:
    """Tell regression from binary and multiclass from the labels of all sites together.

    Floats with more than :data:`MAX_FLOAT_CLASSES` distinct values are a regression target
    (``num_classes`` 0); any other labels are classes, and their number of distinct values is
    ``num_classes``. Pass labels encoded by :func:`encode_labels` for classification.
    """
    y = np.asarray(y_all)
    if y.ndim != 1 or len(y) == 0:
        raise DataError(f"cannot infer the task from labels of shape {y.shape}")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise DataError("labels contain NaN or infinite values; drop those rows")
    try:
        n_distinct = len(np.unique(y))
    except TypeError:
        raise DataError("labels mix types that cannot be compared; encode them first") from None
    if y.dtype.kind == "f" and n_distinct > MAX_FLOAT_CLASSES:
        return TaskType.REGRESSION, 0
    if n_distinct < 2:
        raise DataError("every row has the same label, so there is nothing to learn; check the "
                        "label column")
    if n_distinct == 2:
        return TaskType.BINARY, 2
    return TaskType.MULTICLASS, n_distinct
