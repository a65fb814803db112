"""Shared steps of the simulated sources: split one table into sites, split each site into
train and test rows, scale and package the arrays as :class:`SiteData`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedcare.core.dataset import SiteData, TaskType
from fedcare.core.errors import DataError
from fedcare.core.seeds import site_round_seed
from fedcare.data.table import Table

#: One site's arrays before packaging: name, x_train, y_train, x_test, y_test.
SiteArrays = tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def task_of(y: np.ndarray) -> tuple[TaskType, int]:
    from fedcare.data.tabular import infer_task

    return infer_task(y)


def split_table(table: Table, n_sites: int, partition: str, alpha: float,
                attribute: np.ndarray | None, test_fraction: float, standardize: bool,
                seed: int) -> list[SiteData]:
    """``table`` split into sites by ``partition`` (iid, dirichlet, or attribute: one site
    per value of ``attribute``), then each site into train and test rows."""
    from fedcare.data.partition import (
        partition_by_attribute,
        partition_dirichlet,
        partition_iid,
    )

    if partition == "attribute":
        assert attribute is not None
        shards = dict(sorted(partition_by_attribute(attribute).items()))
    elif partition == "dirichlet":
        parts = partition_dirichlet(table.y, n_sites, alpha, seed)
        shards = {f"site-{i + 1}": p for i, p in enumerate(parts)}
    else:
        parts = partition_iid(len(table.y), n_sites, seed)
        shards = {f"site-{i + 1}": p for i, p in enumerate(parts)}
    task, n_classes = task_of(table.y)
    arrays = []
    for i, (name, idx) in enumerate(shards.items()):
        if len(idx) == 0:
            raise DataError("has zero rows after partitioning; use fewer sites", site=name)
        tr, te = split_rows(idx, test_fraction, seed, i)
        arrays.append((name, table.x[tr], table.y[tr], table.x[te], table.y[te]))
    return finish(arrays, table.feature_names, task, n_classes, standardize)


def split_rows(idx: np.ndarray, test_fraction: float, seed: int,
               site_index: int) -> tuple[np.ndarray, np.ndarray]:
    """A site's rows ``idx`` split into train and test (the node's split, same seed)."""
    from fedcare.data.partition import split_train_test

    return split_train_test(idx, test_fraction, site_round_seed(seed, 0, site_index))


def finish(arrays: Sequence[SiteArrays], feature_names: Sequence[str], task: TaskType,
           n_classes: int, standardize: bool) -> list[SiteData]:
    """Scale (by the federation's statistics, from per-site sums) and package the sites."""
    if standardize:
        from fedcare.data.standardize import apply_standardizer, federated_standardizer

        mean, std = federated_standardizer([a[1] for a in arrays])
        arrays = [(n, apply_standardizer(xtr, mean, std), ytr, apply_standardizer(xte, mean, std),
                   yte) for n, xtr, ytr, xte, yte in arrays]
    out = []
    for name, xtr, ytr, xte, yte in arrays:
        if len(ytr) == 0:
            raise DataError("has zero training rows; lower data.test_fraction or add data",
                            site=name)
        out.append(SiteData(name=name, x_train=np.ascontiguousarray(xtr, dtype=np.float32),
                            y_train=_labels(ytr, task), x_test=np.ascontiguousarray(
                                xte, dtype=np.float32), y_test=_labels(yte, task),
                            feature_names=tuple(feature_names), task=task,
                            num_classes=n_classes))
    return out


def _labels(y: np.ndarray, task: TaskType) -> np.ndarray:
    return np.ascontiguousarray(y, dtype=np.float32 if task is TaskType.REGRESSION else np.int64)


def unique_site_names(names: Sequence[str]) -> None:
    dupes = sorted({n for n in names if list(names).count(n) > 1})
    if dupes:
        raise DataError(f"site names must be unique; repeated: {dupes}")
