"""Tables that need no files: a real clinical benchmark and a learnable synthetic one.

They let a study, a test or a demo run end to end with no data on disk and no network.
"""

from __future__ import annotations

import numpy as np

from fedcare.data.table import Table


def load_breast_cancer() -> Table:
    """Wisconsin Diagnostic Breast Cancer (569 rows, 30 features, binary), shipped with sklearn.

    Label 0 = malignant, 1 = benign (sklearn's coding). Street, Wolberg & Mangasarian (1993).
    """
    from sklearn.datasets import load_breast_cancer as _load

    bunch = _load()
    return Table(x=np.ascontiguousarray(bunch.data, dtype=np.float32),
                 y=np.asarray(bunch.target, dtype=np.int64),
                 feature_names=tuple(str(n) for n in bunch.feature_names))


def make_synthetic(n_rows: int, n_features: int, *, n_classes: int = 2, seed: int = 0) -> Table:
    """A classification table a model can learn, identical for identical arguments.

    Features are standard normal. A fixed random "teacher" scores each row with a linear term
    plus a small nonlinear one (``tanh`` of a second projection), adds Gaussian noise and takes
    the arg-max over classes, so labels are learnable (a linear model does well, a nonlinear one
    better) but not perfectly separable. Every class is guaranteed at least one row when
    ``n_rows >= n_classes``, so downstream task inference sees all ``n_classes``.
    """
    if n_rows < 1 or n_features < 1:
        raise ValueError(f"need n_rows >= 1 and n_features >= 1, got {n_rows}, {n_features}")
    if n_classes < 2:
        raise ValueError(f"need n_classes >= 2, got {n_classes}")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_rows, n_features))
    w_lin = rng.standard_normal((n_features, n_classes))
    w_nl = rng.standard_normal((n_features, n_classes))
    scores = x @ w_lin + 0.5 * np.tanh(x @ w_nl) * np.sqrt(n_features)
    scores /= np.sqrt(n_features)
    scores += 0.3 * rng.standard_normal(scores.shape)
    y = np.argmax(scores, axis=1).astype(np.int64)
    if n_rows >= n_classes:
        _ensure_every_class(y, scores, n_classes)
    return Table(x=x.astype(np.float32), y=y,
                 feature_names=tuple(f"x{i}" for i in range(n_features)))


def _ensure_every_class(y: np.ndarray, scores: np.ndarray, n_classes: int) -> None:
    """Give each absent class the row that scores it highest among rows it can take over."""
    taken: set[int] = set()
    for c in range(n_classes):
        if (y == c).any():
            continue
        for row in np.argsort(-scores[:, c]):
            if int(row) not in taken and np.count_nonzero(y == y[row]) > 1:
                y[row] = c
                taken.add(int(row))
                break
