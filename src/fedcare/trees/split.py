"""The hub's half of a level: from the federation's summed histograms, choose each open
node's best split, or make it a leaf.

The gain and weight formulas are XGBoost's (Chen & Guestrin 2016, eq. 5-7): a node with
gradient sum G and hessian sum H has weight ``-G / (H + lambda)`` and score
``G^2 / (H + lambda)``; a split gains ``score(L) + score(R) - score(parent)``. As in
XGBoost's ``hist`` updater, each child needs a hessian sum of at least ``min_child_weight``
(and above 0), a split must gain more than 1e-6 and at least ``gamma``, and missing values are
tried on both sides: the side that gains more becomes the node's learned default direction
(sparsity-aware split finding, algorithm 3). Ties go to the lowest feature, then to "missing
right", then to the lowest cut, so the same histogram always gives the same tree.
"""

from __future__ import annotations

import numpy as np

from fedcare.core.errors import ProtocolError, ValidationError
from fedcare.trees.ensemble import LEAF, OPEN, SPLIT, Ensemble
from fedcare.trees.options import TreeOptions
from fedcare.trees.sketch import PAD

#: XGBoost's smallest loss change that counts as a split (``kRtEps``).
_RT_EPS = 1e-6


def _score(grad: np.ndarray, hess: np.ndarray, options: TreeOptions) -> np.ndarray:
    ok = (hess >= options.min_child_weight) & (hess > 0)
    return np.where(ok, grad * grad / np.where(ok, hess + options.reg_lambda, 1.0), 0.0)


def leaf_weight(grad: np.ndarray, hess: np.ndarray, options: TreeOptions) -> np.ndarray:
    """XGBoost's optimal weight ``-G / (H + lambda)`` (0 below ``min_child_weight``), not
    yet multiplied by the learning rate."""
    grad, hess = np.asarray(grad, np.float64), np.asarray(hess, np.float64)
    ok = (hess >= options.min_child_weight) & (hess > 0)
    return np.where(ok, -grad / np.where(ok, hess + options.reg_lambda, 1.0), 0.0)


def candidate_mask(cuts: np.ndarray) -> np.ndarray:
    """Which "left = bins 0..b" splits exist, ``(n_features, max_bin)``: one per real cut,
    plus the split after the last real cut (present values left, missing right)."""
    ext = np.concatenate([cuts, np.full((cuts.shape[0], 1), PAD)], axis=1)
    real = ext < PAD
    first_pad = np.arange(ext.shape[1])[None, :] == real.sum(axis=1, keepdims=True)
    return real | first_pad


def best_splits(hist: np.ndarray, parent: np.ndarray, mask: np.ndarray,
                options: TreeOptions) -> dict[str, np.ndarray]:
    """The best split of each node from its histogram ``(k, F, max_bin + 1, 2)`` and its
    (G, H) ``(k, 2)``: feature, bin, default_left, gain (-inf: no valid split) and the
    children's (G, H)."""
    k, _, b1, _ = hist.shape
    present = np.cumsum(hist[:, :, : b1 - 1, :], axis=2)  # bins 0..b: (k, F, B, 2)
    missing = hist[:, :, b1 - 1, None, :]
    # direction 0: missing right; 1: missing left -> (k, F, 2, B, 2)
    left = np.stack([present, present + missing], axis=2)
    right = parent[:, None, None, None, :] - left
    lh, rh = left[..., 1], right[..., 1]
    valid = (mask[None, :, None, :] & (lh >= options.min_child_weight)
             & (rh >= options.min_child_weight) & (lh > 0) & (rh > 0))
    gain = (_score(left[..., 0], lh, options) + _score(right[..., 0], rh, options)
            - _score(parent[:, 0], parent[:, 1], options)[:, None, None, None])
    gain = np.where(valid, gain, -np.inf)
    flat = gain.reshape(k, -1)
    best = np.argmax(flat, axis=1)
    f, d, b = np.unravel_index(best, gain.shape[1:])
    rows = np.arange(k)
    return {"feature": f, "bin": b, "default_left": d, "gain": flat[rows, best],
            "left": left[rows, f, d, b], "right": right[rows, f, d, b]}


#: Candidate gains evaluated at once (k nodes x F x 2 x B values; 2^22 floats = 32 MB).
_CHUNK = 1 << 22


def _best_in_chunks(hist: np.ndarray, parent: np.ndarray, mask: np.ndarray,
                    options: TreeOptions) -> dict[str, np.ndarray]:
    """:func:`best_splits` over groups of nodes, so a deep level's search stays in bounded
    memory."""
    per_node = max(1, hist.shape[1] * 2 * hist.shape[2])
    step = max(1, _CHUNK // per_node)
    parts = [best_splits(hist[i:i + step], parent[i:i + step], mask, options)
             for i in range(0, hist.shape[0], step)]
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def with_siblings(left_hist: np.ndarray, parent_hist: np.ndarray) -> np.ndarray:
    """A level's full histograms from its left children's ``(2^(level-1), F, B+1, 2)`` and
    the previous level's (the parents', same shape): right = parent - left (XGBoost's
    subtraction trick). Sums that cancel to rounding noise (within 1e-9 of the operands)
    become exactly 0, so an empty bin stays empty rather than a tiny positive weight."""
    left = np.asarray(left_hist, np.float64)
    parent = np.asarray(parent_hist, np.float64)
    if left.shape != parent.shape:
        raise ValidationError(f"left children's histograms {left.shape} do not match their "
                              f"parents' {parent.shape}")
    right = parent - left
    right[np.abs(right) <= 1e-9 * (np.abs(parent) + np.abs(left))] = 0.0
    full = np.empty((2 * left.shape[0], *left.shape[1:]))
    full[0::2], full[1::2] = left, right
    return full


def grow_level(ens: Ensemble, tree: int, level: int, summed_hist: np.ndarray,
               options: TreeOptions) -> Ensemble:
    """The ensemble with the open nodes at ``level`` of ``tree`` split or made leaves, from
    the federation's histograms ``(2^level, n_features, max_bin + 1, 2)``. Children of a
    split are open, or leaves at ``max_depth``; they get their (G, H) and value at once."""
    nodes = 2**level
    first = nodes - 1
    expected = (nodes, ens.n_features, ens.max_bin + 1, 2)
    hist = np.asarray(summed_hist, np.float64)
    if hist.shape != expected:
        raise ValidationError(f"histograms of level {level} must be {expected}, got {hist.shape}")
    if not np.isfinite(hist).all():
        raise ValidationError("histograms hold a non-finite number")
    if (ens.max_depth, ens.objective) != (options.max_depth, options.objective):
        raise ValidationError("the options do not describe this ensemble (max_depth or "
                              "objective differ)")
    if ens.next_step() != (tree, level):
        raise ProtocolError(f"histograms for tree {tree} level {level} arrived, but the "
                            f"ensemble grows {ens.next_step()} next")
    rows = {name: getattr(ens, name)[tree].copy() for name in
            ("status", "feature", "split_bin", "default_left", "weight", "gain",
             "sum_grad", "sum_hess")}
    heap = np.arange(first, first + nodes)
    if level == 0:
        totals = hist[0, 0].sum(axis=0)
        rows["sum_grad"][0], rows["sum_hess"][0] = totals
        open_ = np.array([True])
    else:
        open_ = rows["status"][heap] == OPEN
    heap = heap[open_]
    parent = np.stack([rows["sum_grad"][heap], rows["sum_hess"][heap]], axis=1)
    found = _best_in_chunks(hist[open_], parent, candidate_mask(ens.cuts), options)
    do_split = (found["gain"] > _RT_EPS) & (found["gain"] >= options.gamma)
    eta = options.learning_rate
    own = leaf_weight(parent[:, 0], parent[:, 1], options)
    f32 = np.float32
    for i, node in enumerate(heap):
        if not do_split[i]:
            rows["status"][node] = LEAF
            rows["weight"][node] = f32(own[i] * eta)
            rows["gain"][node] = 0.0
            continue
        rows["status"][node] = SPLIT
        rows["feature"][node] = found["feature"][i]
        rows["split_bin"][node] = found["bin"][i]
        rows["default_left"][node] = found["default_left"][i]
        rows["gain"][node] = f32(found["gain"][i])
        rows["weight"][node] = f32(own[i])
        child_status = LEAF if level + 1 == options.max_depth else OPEN
        for child, (grad, hess) in ((2 * node + 1, found["left"][i]),
                                    (2 * node + 2, found["right"][i])):
            rows["status"][child] = child_status
            rows["sum_grad"][child], rows["sum_hess"][child] = grad, hess
            rows["weight"][child] = f32(leaf_weight(grad, hess, options) * eta)
    return ens.replace_tree(tree, **rows)
