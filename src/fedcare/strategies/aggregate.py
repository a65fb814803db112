"""Numeric core shared by every strategy: updates stacked into one preallocated matrix.

Averaging ``k`` updates of ``p`` values is a single (k,) x (k, p) matrix-vector product on a
matrix that was allocated once per study. That reaches the machine's memory bandwidth (the
benchmark in ``benchmarks/aggregation.py`` shows it next to a plain ``numpy`` copy), whereas
``sum(w_i * p_i)`` allocates a temporary per site and reaches about a third of it.
"""

from __future__ import annotations

import numpy as np

from fedcare.core.errors import ValidationError
from fedcare.core.params import Parameters, ParamSpec


def compute_dtype(spec: ParamSpec) -> np.dtype:
    """The dtype aggregation runs in: the widest floating dtype of the model (at least f32)."""
    return np.result_type(np.float32, *(np.dtype(s.dtype) for s in spec.values()))


def weighted_average_rows(stack: np.ndarray, weights: np.ndarray,
                          out: np.ndarray | None = None) -> np.ndarray:
    """Return ``sum_i w_i * stack[i] / sum_i w_i`` as one matrix-vector product.

    ``stack`` is (k, p); ``weights`` (k,) non-negative with a positive sum. ``out`` (p,) may be
    given to avoid allocating the result.
    """
    if stack.ndim != 2 or weights.shape != (stack.shape[0],):
        raise ValidationError(f"cannot average stack {stack.shape} with weights {weights.shape}")
    w = np.asarray(weights, dtype=np.float64)
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValidationError("aggregation weights must be finite, >= 0 and not all zero")
    coeffs = (w / w.sum()).astype(stack.dtype)
    if out is None:
        out = np.empty(stack.shape[1], dtype=stack.dtype)
    np.matmul(coeffs, stack, out=out)
    return out


class UpdateStack:
    """Preallocated (capacity, p) buffer that updates are written into as they arrive.

    Reused round after round, so a 100-site study with a 1 M-parameter model holds exactly one
    400 MB matrix instead of allocating per update.
    """

    def __init__(self, spec: ParamSpec, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.spec = spec
        self.dtype = compute_dtype(spec)
        self._buf = np.empty((capacity, spec.total_size), dtype=self.dtype)
        self._weights = np.zeros(capacity, dtype=np.float64)
        self._sites: list[str] = []

    @property
    def capacity(self) -> int:
        return self._buf.shape[0]

    def clear(self) -> None:
        self._sites.clear()

    def add(self, site: str, params: Parameters, weight: float, *, validated: bool = False
            ) -> None:
        """Copy one update into the next row.

        The layout (and finiteness) is checked unless the caller already did so, as the wire
        decoder does for every update it returns.
        """
        if site in self._sites:
            raise ValidationError("update already counted this round", site=site)
        k = len(self._sites)
        if k >= self.capacity:
            raise ValidationError("more updates than sites in the round", site=site)
        if not validated:
            self.spec.validate(params, what="update parameters", site=site)
        row = self._buf[k]
        pos = 0
        for arr in params.values():
            row[pos:pos + arr.size] = arr.reshape(-1)
            pos += arr.size
        self._weights[k] = weight
        self._sites.append(site)

    def add_to_sum(self, vector: np.ndarray) -> None:
        """Add ``vector`` to the rows' sum (DP-FedAvg's central noise): with unit weights the
        average then moves by ``vector / n``, exactly as noise added to the sum of the clipped
        updates before dividing. Refused for weighted stacks, where it would be scaled."""
        k = len(self._sites)
        if k == 0 or not np.all(self._weights[:k] == 1.0):
            raise ValidationError("noise can only be added to a non-empty, uniformly "
                                  "weighted stack")
        if vector.shape != (self._buf.shape[1],):
            raise ValidationError(f"noise of shape {vector.shape} for a stack of width "
                                  f"{self._buf.shape[1]}")
        self._buf[0] += vector.astype(self._buf.dtype, copy=False)

    @property
    def sites(self) -> list[str]:
        return list(self._sites)

    def __len__(self) -> int:
        return len(self._sites)

    @property
    def rows(self) -> np.ndarray:
        """View of the filled rows, (k, p)."""
        return self._buf[: len(self._sites)]

    @property
    def weights(self) -> np.ndarray:
        return self._weights[: len(self._sites)]

    def average(self, *, uniform: bool = False, out: np.ndarray | None = None) -> np.ndarray:
        """Weighted (by examples) or uniform mean of the filled rows as a flat vector."""
        if not self._sites:
            raise ValidationError("no updates to aggregate")
        w = np.ones(len(self._sites)) if uniform else self.weights
        return weighted_average_rows(self.rows, w, out=out)
