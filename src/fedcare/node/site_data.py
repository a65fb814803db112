"""Turn a networked study's data section plus the site's own file into :class:`SiteData`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedcare.config import FederatedData
from fedcare.core.errors import DataError
from fedcare.core.seeds import site_round_seed
from fedcare.data.dataset import SiteData, TaskType


def build_site_data(data: FederatedData, site: str, site_index: int, seed: int,
                    path: Path) -> SiteData:
    from fedcare.data.partition import split_train_test
    from fedcare.data.tabular import load_table

    table = load_table(path, label=data.label, features=data.features, site=site)
    task = TaskType(data.task)
    classes = data.classes if task is TaskType.MULTICLASS else 2
    y = table.y
    if task is TaskType.REGRESSION:
        y = y.astype(np.float32)
    else:
        if y.dtype.kind not in "iub" and not (y.dtype.kind == "f" and np.all(y == np.round(y))):
            raise DataError(f"label {data.label!r} must hold class ids 0..{classes - 1} "
                            "(integers) in a networked study", site=site)
        y = y.astype(np.int64)
        bad = (y < 0) | (y >= classes)
        if bad.any():
            raise DataError(f"{int(bad.sum())} rows have a label outside 0..{classes - 1}",
                            site=site)
    tr, te = split_train_test(np.arange(len(y)), data.test_fraction,
                              site_round_seed(seed, 0, site_index))
    x_tr, x_te = table.x[tr], table.x[te]
    # No local scaling: when the study standardizes, every task carries the federation-wide
    # mean/std (computed from all sites' sums), so each site scales its rows identically.
    return SiteData(site, np.ascontiguousarray(x_tr, np.float32), y[tr],
                    np.ascontiguousarray(x_te, np.float32), y[te], tuple(data.features), task,
                    classes)
