"""The site's half of a level: bin the rows, compute gradients, route rows to the open nodes
and sum gradient/hessian histograms.

Histograms are sums over rows, so the hub adds the sites' histograms (in the clear or through
secure aggregation) and obtains exactly the histogram of the pooled rows; the split it then
chooses is the split XGBoost's ``hist`` method would choose on the pooled data with the same
cuts (Chen & Guestrin 2016, algorithm 2; the federated form is that of SecureBoost, Cheng et
al. 2021, and of XGBoost's own federated learning plugin, for horizontally split rows).
"""

from __future__ import annotations

import numpy as np

from fedcare.trees.ensemble import SPLIT, Ensemble
from fedcare.trees.options import Objective

#: XGBoost's floor on the logistic hessian.
_MIN_HESS = 1e-16


def bin_matrix(X: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Bin index of every value: the number of cuts at or below it (so ``value < cuts[b]``
    exactly when ``bin <= b``), compared in float32; a missing value (NaN) gets bin
    ``max_bin`` (its own). Returns ``(n_rows, n_features)`` uint16."""
    X32 = np.asarray(X, dtype=np.float32)
    cuts = np.asarray(cuts, np.float64)
    n_f, n_cuts = cuts.shape
    if X32.ndim != 2 or X32.shape[1] != n_f:
        raise ValueError(f"rows must be (n, {n_f}) to match the cuts, got {X32.shape}")
    out = np.empty(X32.shape, dtype=np.uint16)
    for f in range(n_f):
        col = X32[:, f].astype(np.float64)
        b = np.searchsorted(cuts[f], col, side="right")
        out[:, f] = np.where(np.isnan(col), n_cuts + 1, b)
    return out


def grad_hess(y: np.ndarray, margin: np.ndarray,
              objective: Objective) -> tuple[np.ndarray, np.ndarray]:
    """First and second derivatives of the loss at ``margin`` (XGBoost's)."""
    y = np.asarray(y, np.float64)
    margin = np.asarray(margin, np.float64)
    if objective == "binary:logistic":
        p = 1.0 / (1.0 + np.exp(-margin))
        return p - y, np.maximum(p * (1.0 - p), _MIN_HESS)
    return margin - y, np.ones_like(margin)


def _walk(binned: np.ndarray, ens: Ensemble, tree: int, depth: int) -> np.ndarray:
    """Heap node of every row after at most ``depth`` splits (a row stops at a leaf)."""
    n = binned.shape[0]
    rows = np.arange(n)
    missing = ens.max_bin
    node = np.zeros(n, dtype=np.int64)
    for _ in range(depth):
        split = ens.status[tree, node] == SPLIT
        if not split.any():
            break
        f = np.clip(ens.feature[tree, node], 0, None).astype(np.int64)
        v = binned[rows, f].astype(np.int64)
        left = np.where(v == missing, ens.default_left[tree, node] > 0,
                        v <= ens.split_bin[tree, node])
        node = np.where(split, 2 * node + 1 + (~left), node)
    return node


def route_rows(binned: np.ndarray, ens: Ensemble, tree: int, level: int) -> np.ndarray:
    """The heap index of the node at ``level`` of tree ``tree`` that each row reaches, or -1
    for a row that stopped at a leaf above that level."""
    node = _walk(binned, ens, tree, level)
    at_level = node >= 2**level - 1
    return np.where(at_level, node, -1)


def tree_margin(binned: np.ndarray, ens: Ensemble, tree: int) -> np.ndarray:
    """The contribution (leaf value) of one complete tree to every row's margin; equal to
    what :meth:`Ensemble.predict_margin` adds for that tree, since bins and thresholds agree."""
    return ens.weight[tree, _walk(binned, ens, tree, ens.max_depth)]


def level_histograms(binned: np.ndarray, g: np.ndarray, h: np.ndarray,
                     node_of_row: np.ndarray, level: int, max_bin: int, *,
                     left_only: bool = False) -> np.ndarray:
    """Gradient and hessian sums ``(2^level, n_features, max_bin + 1, 2)`` per node at
    ``level``, feature and bin (bin ``max_bin`` holds missing values); rows routed to -1 are
    left out. Sums over rows: the sites' histograms add up to the pooled histogram.

    ``left_only`` (level >= 1): only the left children's histograms, ``(2^(level-1), ...)``,
    half the bytes; the hub, which holds the parents' summed histograms from the previous
    level, derives the right children by subtraction (:func:`fedcare.trees.split.with_siblings`,
    XGBoost's histogram subtraction trick)."""
    n_f = binned.shape[1]
    b1 = max_bin + 1
    node_of_row = np.asarray(node_of_row)
    sel = node_of_row >= 0
    local = node_of_row - (2**level - 1)
    nodes = 2**level
    if ((local[sel] < 0) | (local[sel] >= nodes)).any():
        raise ValueError(f"node_of_row holds a node that is not at level {level} (nor -1)")
    if binned.size and int(binned.max()) > max_bin:
        raise ValueError(f"a bin index is above max_bin = {max_bin} (the missing-value bin)")
    if left_only:
        if level < 1:
            raise ValueError("left_only needs level >= 1 (the root has no sibling)")
        sel &= local % 2 == 0
        local = local // 2
        nodes //= 2
    base = local[sel].astype(np.int64) * b1
    rows = binned[sel]
    gw, hw = np.asarray(g, np.float64)[sel], np.asarray(h, np.float64)[sel]
    out = np.empty((nodes, n_f, b1, 2))
    for f in range(n_f):  # one pass per feature: 2x faster than one (rows x features) index
        idx = base + rows[:, f]
        out[:, f, :, 0] = np.bincount(idx, weights=gw, minlength=nodes * b1).reshape(nodes, b1)
        out[:, f, :, 1] = np.bincount(idx, weights=hw, minlength=nodes * b1).reshape(nodes, b1)
    return out
