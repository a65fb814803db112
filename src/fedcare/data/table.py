"""One table of rows before it is split into sites: the hand-off between loaders and partitioners.

Loaders only read and validate; splitting into sites, train/test and standardizing are separate
steps, so every loader (built-in, CSV/Parquet, synthetic) feeds the same partitioners.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Table:
    """Features ``x`` (n, features) as float32, labels ``y`` (n,), and the feature names.

    ``y`` is int64 for the built-in tables. :func:`fedcare.data.tabular.load_table` returns
    labels *raw* (strings, bools, ints or floats) because class ids must be assigned with one
    vocabulary shared by every site (:func:`fedcare.data.tabular.encode_labels`).
    """

    x: np.ndarray
    y: np.ndarray
    feature_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} rows but y has {len(self.y)}")
        if self.x.ndim == 2 and self.x.shape[1] != len(self.feature_names):
            raise ValueError(f"x has {self.x.shape[1]} columns but "
                             f"{len(self.feature_names)} feature names")
