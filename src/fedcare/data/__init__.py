"""Site data: loaders (CSV/Parquet, built-in, MedMNIST-style .npz), partitioners, splits.

The loaders pull in pandas, pyarrow and scikit-learn, which cost about half a second to import.
Every process that only needs :class:`SiteData` (e.g. a site worker) imports this package, so
those names are imported on first use (PEP 562) rather than here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fedcare.core.dataset import SiteData, TaskType
from fedcare.data.table import Table

if TYPE_CHECKING:
    from fedcare.data.builtin import load_breast_cancer, make_synthetic
    from fedcare.data.images import load_npz_images
    from fedcare.data.partition import (
        partition_by_attribute,
        partition_dirichlet,
        partition_iid,
        split_train_test,
    )
    from fedcare.data.standardize import apply_standardizer, federated_standardizer
    from fedcare.data.tabular import check_same_features, encode_labels, infer_task, load_table

_LAZY = {
    "load_breast_cancer": "builtin",
    "make_synthetic": "builtin",
    "load_npz_images": "images",
    "partition_by_attribute": "partition",
    "partition_dirichlet": "partition",
    "partition_iid": "partition",
    "split_train_test": "partition",
    "apply_standardizer": "standardize",
    "federated_standardizer": "standardize",
    "check_same_features": "tabular",
    "encode_labels": "tabular",
    "infer_task": "tabular",
    "load_table": "tabular",
}

__all__ = [
    "SiteData",
    "Table",
    "TaskType",
    "apply_standardizer",
    "check_same_features",
    "encode_labels",
    "federated_standardizer",
    "infer_task",
    "load_breast_cancer",
    "load_npz_images",
    "load_table",
    "make_synthetic",
    "partition_by_attribute",
    "partition_dirichlet",
    "partition_iid",
    "split_train_test",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"fedcare.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
