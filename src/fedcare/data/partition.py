"""Split row indices into simulated sites and each site's rows into train and test.

Pure functions on index arrays, deterministic under their seed. The algorithms are specified
exactly (the benchmarks re-implement them without importing fedcare), so change them only
together with the benchmarks. Every shard is returned sorted, so a site's rows keep file order.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from fedcare.core.errors import DataError

MAX_DIRICHLET_DRAWS = 100


def partition_iid(n_rows: int, n_sites: int, seed: int) -> list[np.ndarray]:
    """Shuffle the rows once and cut them into ``n_sites`` near-equal shards (sizes differ by 1).

    ``np.array_split(default_rng(seed).permutation(n_rows), n_sites)``, each shard sorted.
    """
    _check_sites(n_rows, n_sites)
    perm = np.random.default_rng(seed).permutation(n_rows)
    shards = np.array_split(perm, n_sites)
    return [np.sort(s) for s in shards]


def partition_dirichlet(y: np.ndarray, n_sites: int, alpha: float, seed: int,
                        min_rows: int = 2) -> list[np.ndarray]:
    """Label-skewed sites: each class is spread over sites in Dirichlet(alpha) proportions.

    The standard non-IID benchmark split (Hsu, Qi & Brown 2019, "Measuring the effects of
    non-identical data distribution for federated visual classification"; Li et al. 2022,
    NIID-Bench). Smaller ``alpha`` means more skew; large ``alpha`` approaches IID.

    Exact algorithm, with ``rng = np.random.default_rng(seed)`` created once::

        for draw in range(MAX_DIRICHLET_DRAWS):
            parts = [[] for _ in range(n_sites)]
            for c in np.unique(y):                      # classes in sorted order
                idx = np.flatnonzero(y == c)
                rng.shuffle(idx)
                p = rng.dirichlet(np.full(n_sites, alpha))
                cuts = (np.cumsum(p) * len(idx)).astype(np.int64)[:-1]
                for site, piece in enumerate(np.split(idx, cuts)):
                    parts[site].append(piece)
            shards = [np.sort(np.concatenate(ps)) for ps in parts]
            if min(len(s) for s in shards) >= min_rows:
                return shards

    and a :class:`DataError` if no draw gives every site ``min_rows`` rows.
    """
    labels = np.asarray(y)
    if labels.ndim != 1:
        raise DataError(f"dirichlet partition needs one label per row, got shape {labels.shape}")
    _check_sites(len(labels), n_sites)
    if not (isinstance(alpha, numbers.Real) and math.isfinite(alpha) and alpha > 0):
        raise DataError(f"dirichlet alpha must be a finite number > 0, got {alpha!r}")
    if min_rows < 0:
        raise DataError(f"min_rows must be >= 0, got {min_rows}")
    if min_rows * n_sites > len(labels):
        raise DataError(f"cannot give {n_sites} sites {min_rows} rows each from {len(labels)} "
                        "rows; use fewer sites or more data")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(MAX_DIRICHLET_DRAWS):
        shards = _dirichlet_draw(labels, classes, n_sites, alpha, rng)
        if min(len(s) for s in shards) >= min_rows:
            return shards
    raise DataError(f"dirichlet partition (alpha={alpha}) left a site with fewer than "
                    f"{min_rows} rows in {MAX_DIRICHLET_DRAWS} draws; raise data.alpha "
                    "(less skew) or lower the number of sites")


def _dirichlet_draw(labels: np.ndarray, classes: np.ndarray, n_sites: int, alpha: float,
                    rng: np.random.Generator) -> list[np.ndarray]:
    parts: list[list[np.ndarray]] = [[] for _ in range(n_sites)]
    for c in classes:
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        p = rng.dirichlet(np.full(n_sites, alpha))
        cuts = (np.cumsum(p) * len(idx)).astype(np.int64)[:-1]
        for site, piece in enumerate(np.split(idx, cuts)):
            parts[site].append(piece)
    return [np.sort(np.concatenate(ps)) for ps in parts]


def partition_by_attribute(values: np.ndarray) -> dict[str, np.ndarray]:
    """One site per distinct value of a column (e.g. the hospital a row came from).

    The natural split when a pooled table records each row's origin: site ``str(value)`` gets
    the sorted indices of the rows with that value, sites in sorted order of value.
    """
    vals = np.asarray(values)
    if vals.ndim != 1 or len(vals) == 0:
        raise DataError(f"attribute partition needs a non-empty column, got shape {vals.shape}")
    missing = int(_isna(vals).sum())
    if missing:
        raise DataError(f"the site attribute is missing in {missing} row(s); fill it or drop "
                        "those rows, so every row belongs to a site")
    try:
        uniques, inverse = np.unique(vals, return_inverse=True)
    except TypeError:
        raise DataError("the site attribute mixes value types (e.g. numbers and text); "
                        "use one type for the column") from None
    names = [str(u) for u in uniques]
    if len(set(names)) != len(names):
        raise DataError("distinct site attribute values print the same (e.g. 1 and '1'); "
                        "use one type for the column")
    inverse = inverse.reshape(-1)
    return {name: np.flatnonzero(inverse == k) for k, name in enumerate(names)}


def _isna(vals: np.ndarray) -> np.ndarray:
    if vals.dtype.kind == "f":
        return np.isnan(vals)
    if vals.dtype.kind == "O":
        return np.array([v is None or (isinstance(v, float) and math.isnan(v)) for v in vals],
                        dtype=bool)
    return np.zeros(len(vals), dtype=bool)


def split_train_test(indices: np.ndarray, test_fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``round(test_fraction * n)`` of a site's rows as its test set; return (train, test).

    ``perm = default_rng(seed).permutation(indices)``; the first ``n_test`` are the test rows.
    Both parts are sorted.
    """
    idx = np.asarray(indices)
    if idx.ndim != 1:
        raise DataError(f"indices must be one-dimensional, got shape {idx.shape}")
    if not (isinstance(test_fraction, numbers.Real) and 0 <= test_fraction < 1):
        raise DataError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    perm = np.random.default_rng(seed).permutation(idx)
    n_test = round(float(test_fraction) * len(idx))  # == int(round(...)), half to even
    test = np.sort(perm[:n_test])
    train = np.sort(perm[n_test:])
    return train, test


def _check_sites(n_rows: int, n_sites: int) -> None:
    if n_sites < 1:
        raise DataError(f"the number of sites must be at least 1, got {n_sites}")
    if n_sites > n_rows:
        raise DataError(f"cannot split {n_rows} rows into {n_sites} sites; every site needs at "
                        "least one row, so use fewer sites")
